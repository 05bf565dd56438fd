"""utils.flops: counted FLOPs equal the ones written out from the formulas (2 per multiply-add), forward and backward.

Each expectation below is derived here from the shapes alone (a matrix product (m, k) x (k, n) is 2 m k n FLOPs),
not taken from the counter under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mae.large.models.vit import VisionTransformer, ViTConfig
from mae.large.utils.flops import achieved, count_flops
from tests.helpers import small_model


def test_a_linear_layer_is_2_m_n_k() -> None:
    m, k, n = 6, 5, 7
    layer = torch.nn.Linear(k, n)
    x = torch.randn(m, k)
    with torch.no_grad():
        assert count_flops(lambda: layer(x)).total == 2 * m * n * k


def test_a_linear_layer_forward_and_backward_is_three_products() -> None:
    """Backward of y = x W^T: dx = dy W (m n k) and dW = dy^T x (n m k): twice the forward, three in all."""
    m, k, n = 6, 5, 7
    layer = torch.nn.Linear(k, n)
    x = torch.randn(m, k, requires_grad=True)
    assert count_flops(lambda: layer(x).sum().backward()).total == 3 * 2 * m * n * k


def test_attention_on_the_cpu_is_counted_as_the_cuda_kernels_are() -> None:
    """softmax(q k^T) v: two batched products of 2 b h s s d each; the backward recomputes the scores and takes
    three more products (torch's formula for the CUDA kernels): 5 x 2 b h s s d."""
    b, h, s, d = 2, 3, 9, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        forward = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert forward.total == 2 * (2 * b * h * s * s * d)
    both = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert both.total == 2 * (2 * b * h * s * s * d) + 5 * (2 * b * h * s * s * d)


def _blocks(tokens: int, dim: int, hidden: int, depth: int) -> int:
    """A transformer block's products over `tokens` tokens: qkv (3 D x D), proj (D x D), fc1 and fc2 (D x hidden
    each), and the attention's q k^T and attn v (T x T x D each)."""
    per_block = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim + 2 * 2 * tokens * dim * hidden
    return depth * (per_block + 2 * 2 * tokens * tokens * dim)


def test_the_mae_forward_at_0_75_against_its_count_by_hand() -> None:
    """The official forward: patch projection over all L patches (it embeds before masking), the encoder on 1 + kept
    tokens, decoder_embed on them, the decoder on 1 + L tokens, decoder_pred on them (its cls row too)."""
    model = small_model()
    c = model.config
    n, length = 3, c.num_patches
    kept = int(length * (1 - 0.75))
    imgs = torch.randn(n, c.in_chans, *c.img_size)
    with torch.no_grad():
        counted = count_flops(lambda: model(imgs, 0.75, torch.rand(n, length)))
    patch_dim = c.patch_size * c.patch_size * c.in_chans
    by_hand = (2 * length * patch_dim * c.embed_dim
               + _blocks(1 + kept, c.embed_dim, int(c.embed_dim * c.mlp_ratio), c.depth)
               + 2 * (1 + kept) * c.embed_dim * c.decoder_embed_dim
               + _blocks(1 + length, c.decoder_embed_dim, int(c.decoder_embed_dim * c.mlp_ratio), c.decoder_depth)
               + 2 * (1 + length) * c.decoder_embed_dim * patch_dim)
    assert counted.total == n * by_hand
    assert counted.per_item(n) == by_hand
    assert set(counted.by_op) == {"convolution", "addmm", "_scaled_dot_product_flash_attention_for_cpu"}


def test_a_classifier_training_step_against_its_count_by_hand() -> None:
    """Forward + backward of the fine-tuning classifier: every linear layer three times its forward (input and weight
    gradients), the patch projection twice (no gradient for the images), attention 2 + 5 products as above."""
    config = ViTConfig.from_mae(small_model().config, num_classes=5, drop_path_rate=0.0)
    model = VisionTransformer(config).train()
    c = config
    n, tokens = 2, 1 + config.num_patches
    imgs, labels = torch.randn(n, c.in_chans, *c.img_size), torch.tensor([1, 3])
    counted = count_flops(lambda: F.cross_entropy(model(imgs), labels).backward())
    dim, hidden, patch_dim = c.embed_dim, int(c.embed_dim * c.mlp_ratio), c.patch_size * c.patch_size * c.in_chans
    linear = c.depth * (2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim + 2 * 2 * tokens * dim * hidden)
    attention = c.depth * 2 * (2 * tokens * tokens * dim)
    head = 2 * dim * c.num_classes  # one pooled vector per image
    patch = 2 * config.num_patches * patch_dim * dim
    by_hand = 3 * (linear + head) + attention * (1 + 5 / 2) + 2 * patch
    assert counted.total == n * by_hand


def test_achieved_rate_and_utilisation() -> None:
    rate = achieved(4e12, 2.0, peak_tflops=8.0)
    assert rate.tflops == pytest.approx(2.0) and rate.mfu == pytest.approx(0.25)
    assert achieved(1e12, 1.0).mfu is None
    with pytest.raises(ValueError, match="seconds"):
        achieved(1.0, 0.0)
