"""The models under torch.compile. A whole model (`torch.compile(model, fullgraph=True)`): one graph for the masked
forward and the classifier, reused over batches of new noise and masks; a new batch size only where a dynamic batch is
asked for. The library's compile (`layers.compile_blocks`, what `compile=True` does): a graph per block shape, shared
by every block, the stochastic-depth rate an input; undone, eager again. Compiled results equal the eager ones to
float32 rounding on the CPU.

Tolerance (float32, CPU): inductor fuses the layer norms, GELUs and residual adds and sums in another order, so a
result is not bit for bit the eager one. Compiled forwards stay within 1e-5 of the eager result relative to its
largest value (`relative_error`, the project's float32 bound), losses within 1e-5 relative; a training step's
gradients within 1e-4 relative to each tensor's largest (a backward adds two more reductions per product).

Graph counts come from a counting backend (`CompileCounter`: tracing only, fast); numerics from inductor, the
backend the jobs use, for the three cases (masked forward, classifier forward, training step): a compile costs seconds
to tens of seconds on two cores.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

from mae.large.models.layers import COMPILED_NONFINITE, _drop_path, compile_blocks, transformer_blocks
from mae.large.models.masks import mask_as_noise
from mae.large.models.vit import VisionTransformer, ViTConfig
from mae.large.utils.compile import CompileOptions
from tests.helpers import relative_error, small_model

RATIO = 0.75


@pytest.fixture(scope="module")
def model():
    return small_model()


def _images(model, n: int = 2, seed: int = 0) -> torch.Tensor:
    c = model.config
    return torch.randn(n, c.in_chans, *c.img_size, generator=torch.Generator().manual_seed(seed))


def _noise(model, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, model.config.num_patches, generator=torch.Generator().manual_seed(seed))


def _classifier(model, **overrides) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig.from_mae(model.config, **{"num_classes": 5, **overrides}))


# ---- one graph --------------------------------------------------------------------------------------------------
def test_the_masked_forward_is_one_graph_over_new_noise(model) -> None:
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=counter)
    imgs = _images(model)
    with torch.no_grad():
        for seed in range(3):
            noise = _noise(model, seed=seed)
            out, eager = compiled(imgs, RATIO, noise), model(imgs, RATIO, noise)
            assert torch.equal(out.mask, eager.mask) and torch.equal(out.pred, eager.pred)
    assert counter.frame_count == 1


def test_chosen_masks_go_in_as_noise_and_count_one_graph_for_all(model) -> None:
    """A mask's count decides the shapes, so a graph cannot take `mask=`: `mask_as_noise` gives the noise and
    `len_keep` of the very same pass, and masks of one count share the graph."""
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=counter)
    imgs, length = _images(model), model.config.num_patches
    with torch.no_grad():
        for seed in range(3):
            removed = torch.randperm(length, generator=torch.Generator().manual_seed(seed))[: length * 3 // 4]
            mask = torch.zeros(length, dtype=torch.bool)
            mask[removed] = True
            noise, kept = mask_as_noise(mask, 2, length)
            out, eager = compiled(imgs, noise=noise, len_keep=kept), model(imgs, mask=mask)
            assert torch.equal(out.mask.bool(), mask.expand(2, -1)) and torch.equal(out.pred, eager.pred)
    assert counter.frame_count == 1
    with pytest.raises(torch._dynamo.exc.TorchDynamoException):  # the count is data: no single graph takes `mask=`
        torch.compile(model, fullgraph=True, backend=CompileCounter())(imgs, mask=mask)


def test_len_keep_is_checked(model) -> None:
    imgs, noise = _images(model), _noise(model)
    with pytest.raises(ValueError, match="len_keep must be an integer from 1"):
        model(imgs, noise=noise, len_keep=0)
    with pytest.raises(ValueError, match="give len_keep with noise alone"):
        model(imgs, RATIO, noise, len_keep=4)


def test_the_classifier_is_one_graph_in_training_and_in_evaluation(model) -> None:
    classifier = _classifier(model, drop_path_rate=0.1)
    for training in (True, False):
        classifier.train(training)
        counter = CompileCounter()
        compiled = torch.compile(classifier, fullgraph=True, dynamic=False, backend=counter)
        for seed in range(3):
            compiled(_images(model, seed=seed))
        assert counter.frame_count == 1


def test_a_new_batch_size_is_a_new_graph_unless_a_dynamic_batch_is_asked_for(model) -> None:
    with torch.no_grad():
        for dynamic, graphs in ((False, 3), (True, 1)):
            counter = CompileCounter()
            compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend=counter)
            for n in (2, 3, 5):
                compiled(_images(model, n), RATIO, _noise(model, n))
            assert counter.frame_count == graphs, dynamic


# ---- the library's compile: the blocks, in place ----------------------------------------------------------------
def test_compiled_blocks_are_one_graph_per_block_shape_and_undone(model) -> None:
    counter = CompileCounter()
    undo = compile_blocks(model, CompileOptions(backend=counter))  # every block shares one compiled function
    try:
        imgs = _images(model)
        with torch.no_grad():
            outs = [model(imgs, RATIO, _noise(model, seed=seed)) for seed in range(3)]
    finally:
        undo()
    assert counter.frame_count == 2  # the encoder's block shape and the decoder's, over 3 batches of new noise
    assert all(b.compiled_forward is None for b in transformer_blocks(model))  # undone: eager again
    with torch.no_grad():
        for seed, out in enumerate(outs):
            assert torch.equal(out.pred, model(imgs, RATIO, _noise(model, seed=seed)).pred)


def test_stochastic_depth_rates_are_graph_inputs(model) -> None:
    """6 blocks, 6 drop-path rates: one graph for the blocks that drop paths (the rate is an input), one for the first
    (rate 0, nothing dropped); in evaluation one more, nothing dropped."""
    classifier = _classifier(model, depth=6, drop_path_rate=0.2).train()
    counter = CompileCounter()
    compile_blocks(classifier, CompileOptions(backend=counter))
    for seed in range(2):
        classifier(_images(model, seed=seed)).sum().backward()
    assert counter.frame_count == 2
    classifier.eval()
    with torch.no_grad():
        classifier(_images(model))
    assert counter.frame_count == 3


def test_compiled_stochastic_depth_is_rand_below_keep() -> None:
    """Compiled, a path is kept where `rand < keep` (the rate an input); eager, timm's `bernoulli_(keep)`: the same
    law, other draws. With inductor's `fallback_random` the compiled draws are torch.rand's, checked against it."""
    x, rate = torch.randn(64, 3, 5), torch.tensor(0.3, dtype=torch.float64)
    compiled = torch.compile(_drop_path, fullgraph=True, dynamic=False, backend="aot_eager")
    torch.manual_seed(3)
    out = compiled(x, rate)
    torch.manual_seed(3)
    kept = torch.rand(64, 1, 1) < 0.7
    assert torch.allclose(out, x * kept / 0.7, rtol=1e-6, atol=0)
    assert 0 < int(kept.sum()) < 64  # some dropped, some kept


# ---- inductor == eager ------------------------------------------------------------------------------------------
def test_the_compiled_masked_forward_equals_eager(model) -> None:
    imgs = _images(model)
    with torch.inference_mode():
        eager = [model(imgs, RATIO, _noise(model, seed=seed)) for seed in range(2)]
        undo = compile_blocks(model, CompileOptions())
        try:
            compiled = [model(imgs, RATIO, _noise(model, seed=seed)) for seed in range(2)]
        finally:
            undo()
    for out, ref in zip(compiled, eager):
        assert torch.equal(out.mask, ref.mask)
        assert relative_error(out.pred, ref.pred) <= 1e-5
        assert abs(out.loss.item() - ref.loss.item()) <= 1e-5 * abs(ref.loss.item())


def test_a_whole_compiled_forward_checks_the_images_inside_the_graph(model) -> None:
    """`torch.compile(model)`: on the CPU the value check is an assertion of the graph, raised before any result."""
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    bad = _images(model)
    bad[1, 0, 0, 0] = float("nan")
    with torch.no_grad(), pytest.raises(RuntimeError, match="NaN or infinite values"):
        compiled(bad, RATIO, _noise(model))
    assert "compiled forward" in COMPILED_NONFINITE


def test_the_compiled_classifier_forward_equals_eager(model) -> None:
    classifier = _classifier(model, num_classes=0, drop_path_rate=0.0).eval()
    imgs = [_images(model, seed=seed) for seed in range(2)]
    with torch.inference_mode():
        eager = [classifier.forward_features(x) for x in imgs]
        undo = compile_blocks(classifier, CompileOptions())
        try:
            compiled = [classifier.forward_features(x) for x in imgs]
        finally:
            undo()
    assert all(relative_error(a, b) <= 1e-5 for a, b in zip(compiled, eager))


def test_a_compiled_training_step_equals_eager(model) -> None:
    """The classifier's step with compiled blocks: loss and every gradient (no drop path: compiled and eager would draw
    other paths; the compiled drop path is the test above)."""
    labels = torch.tensor([1, 3])
    imgs = _images(model)
    results = []
    for compiled in (False, True):
        net = _classifier(model, drop_path_rate=0.0).train()
        undo = compile_blocks(net, CompileOptions()) if compiled else None
        try:
            loss = F.cross_entropy(net(imgs), labels, label_smoothing=0.1)
            loss.backward()
        finally:
            if undo is not None:
                undo()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}))
    (eager_loss, eager_grads), (loss, grads) = results
    assert abs(loss.item() - eager_loss.item()) <= 1e-5 * abs(eager_loss.item())
    assert eager_grads.keys() == grads.keys()
    worst = max(relative_error(grads[name], eager_grads[name]) for name in grads)
    assert worst <= 1e-4, worst


@pytest.mark.slow
def test_vit_large_compiled_masked_forward_equals_eager() -> None:
    """ViT-L/16 at 224 (random init, seed 0), batch 2: the library's compile over 3 batches of new noise makes one graph
    per block shape (encoder, decoder) and equals eager to float32 rounding (the same 1e-5 relative bound)."""
    from mae.large import MAEConfig, MaskedAutoencoderViT
    from mae.large.utils.compile import CompileWatch

    torch.manual_seed(0)
    large = MaskedAutoencoderViT(MAEConfig.vit_large()).eval()
    imgs = _images(large)
    watch = CompileWatch()
    with torch.inference_mode():
        eager = [large(imgs, RATIO, _noise(large, seed=seed)) for seed in range(3)]
        undo = compile_blocks(large, CompileOptions())
        try:
            compiled = [large(imgs, RATIO, _noise(large, seed=seed)) for seed in range(3)]
        finally:
            undo()
    found = watch.poll()
    assert found is not None and found.graphs == 2 and found.seconds > 0
    for out, ref in zip(compiled, eager):
        assert torch.equal(out.mask, ref.mask)
        assert relative_error(out.pred, ref.pred) <= 1e-5
        assert abs(out.loss.item() - ref.loss.item()) <= 1e-5 * abs(ref.loss.item())
