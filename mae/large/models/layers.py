"""Transformer building blocks, named so that `state_dict()` keys equal the official checkpoint keys.

`PatchEmbed.proj`, `Block.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2` are the names that
timm's `PatchEmbed` and `Block` give and that the released files use; nothing needs renaming on load.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import invalid_argument, short_list
from ..utils.compile import CompileOptions, compile_fn, own_copy


class _CastCache(NamedTuple):
    key: tuple  # (dtype, data_ptr, version) of the weight and of the bias when they were cast
    weight_ref: weakref.ref  # the very tensors that were cast: a new tensor at a reused address is a miss
    bias_ref: weakref.ref | None
    weight: torch.Tensor
    bias: torch.Tensor | None


class Linear(nn.Linear):
    """`nn.Linear` that keeps its autocast copy between calls, for CPU inference in bfloat16.

    CPU autocast casts every float32 weight on every call (its cast cache lives only as long as one
    `torch.autocast` context): for the 330 M parameters of MAE ViT-L that costs about as much as the
    bfloat16 matmuls themselves. Under CPU autocast with no gradient to record (inference_mode /
    no_grad, or frozen weights) this layer casts weight and bias once, keeps the copies and reuses
    them while the weights are unchanged (the same tensors, same storage, same version counter, so
    in-place updates, load_state_dict and reassignment all recast; writes through `weight.data`
    bypass the version counter: call `drop_cast_cache()` after those). The cast is the one autocast
    does (`tensor.to(dtype)`), so results are bit-identical to plain autocast.

    Outside CPU autocast (float32, CUDA autocast, training) it is exactly `nn.Linear`: the float32
    path runs the same `F.linear` call. The cached copies cost half the float32 weights in memory;
    they are not part of `state_dict()`, nor of a pickled or deep-copied module; `drop_cast_cache()`
    frees them.
    """

    _cast_cache: _CastCache | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Compiled, the graph casts the weights itself (and a weak reference or a version counter cannot be traced).
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling():
            cast = self._cast_weights(torch.get_autocast_dtype("cpu"))
            if cast is not None:
                return F.linear(x, *cast)  # autocast casts x; the weights are already in its dtype
        return F.linear(x, self.weight, self.bias)

    def _cast_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        w, b = self.weight, self.bias
        if w.dtype != torch.float32 or w.device.type != "cpu":
            return None  # autocast only casts float32; anything else runs as plain autocast
        if torch.is_grad_enabled() and (w.requires_grad or (b is not None and b.requires_grad)):
            return None  # autograd must see the cast from the parameter: no cache while training
        try:
            key = (dtype, w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
        except RuntimeError:  # inference tensors (built in inference_mode) have no version counter
            return None
        cache = self._cast_cache
        if (cache is None or cache.key != key or cache.weight_ref() is not w
                or (b is not None and (cache.bias_ref is None or cache.bias_ref() is not b))):
            # Ordinary tensors even inside inference_mode, so later no_grad code can use them too.
            with torch.inference_mode(False), torch.no_grad():
                cache = _CastCache(key, weakref.ref(w), None if b is None else weakref.ref(b),
                                   w.to(dtype), None if b is None else b.to(dtype))
            self._cast_cache = cache
        return cache.weight, cache.bias

    def drop_cast_cache(self) -> None:
        self._cast_cache = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_cast_cache", None)  # a derived copy (and weak references cannot be pickled)
        return state


class PatchEmbed(nn.Module):
    """Image -> sequence of patch embeddings: a stride-p convolution, flattened row-major."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (N, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (N, gh*gw, D)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (the checkpoint stores q, k, v stacked)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim)  # (N, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, T, d)
        # The fused kernel computes softmax(q k^T / sqrt(d)) v, the scale timm uses, without
        # materialising the (T, T) matrix more than once.
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, d)
        x = x.transpose(1, 2).reshape(n, t, c)  # (N, T, C)
        return self.proj(x)


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2, as timm's `Mlp` with `nn.GELU`."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_path rate must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        return _drop_path(x, self.drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        eps: float = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    # The compiled `block_forward` that `compile_blocks` gives every block of a model (None: eager).
    compiled_forward: Callable[..., torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rate = self.drop_path.drop_prob if isinstance(self.drop_path, DropPath) and self.training else 0.0
        if self.compiled_forward is None:
            return block_forward(self, x, rate or None)
        # Compiled, the rate goes in as a 0-d CPU tensor, an input of the graph: one graph serves every block of a shape
        # (a float would be a constant of the graph, a graph per rate); read on the host, it costs no device sync.
        return self.compiled_forward(self, x, torch.tensor(rate, dtype=torch.float64) if rate else None)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("compiled_forward", None)  # a compiled function belongs to this process, not to the model
        return state


def block_forward(block: Block, x: torch.Tensor, drop_prob: float | torch.Tensor | None) -> torch.Tensor:
    """A block's computation with its stochastic-depth rate given (None: no path dropped, as in evaluation): exactly
    `x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`, the same random draws included."""
    branch = block.attn(block.norm1(x))
    x = x + (branch if drop_prob is None else _drop_path(branch, drop_prob))
    branch = block.mlp(block.norm2(x))
    return x + (branch if drop_prob is None else _drop_path(branch, drop_prob))


def _drop_path(x: torch.Tensor, drop_prob: float | torch.Tensor) -> torch.Tensor:
    """Stochastic depth at rate `drop_prob` > 0: the whole residual branch dropped per sample, the rest scaled up.

    Eager: timm's `x.new_empty(shape).bernoulli_(keep)`. Compiled: `rand(shape) < keep`, the same distribution with the
    rate an input of the graph (`bernoulli_` takes it as a constant); a compiled graph draws from inductor's generator
    anyway, not eager's stream."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # one draw per sample, broadcast over tokens
    if torch.compiler.is_compiling():
        keep = 1.0 - drop_prob
        kept = torch.rand(shape, device=x.device) < keep
        return x * kept.to(x.dtype) / (keep.to(x.dtype) if isinstance(keep, torch.Tensor) else keep)
    keep = 1.0 - float(drop_prob)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def transformer_blocks(model: nn.Module) -> list[Block]:
    """Every `Block` of `model`, in module order (the encoder's, then the decoder's)."""
    return [module for module in model.modules() if isinstance(module, Block)]


def compile_blocks(model: nn.Module, options: CompileOptions) -> Callable[[], None]:
    """Compile the transformer blocks of `model` in place (regional compilation) and return what undoes it.

    One compiled `block_forward` is shared by every block: dynamo makes one graph per block shape (the encoder's, the
    decoder's; in training one more for the first block, which drops no path), each compiled once and reused by every
    block of that shape, so compiling ViT-L takes the time of a block or two, not of 24. Inside a block inductor fuses
    the layer norms, the GELU, the bias and residual adds and the attention's reshapes around the matrix products; the
    patch projection, the masking and the loss between the blocks stay eager (a few kernels). The model's own forward
    code, its `state_dict` and what `torch.compile(model)` does are unchanged."""
    compiled = compile_fn(own_copy(block_forward), options)  # its own graphs, whatever compiled before in the process
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compiled_forward = compiled

    def undo() -> None:
        for block in blocks:
            block.__dict__.pop("compiled_forward", None)

    return undo


# ---- the official init, one function per rule (models_mae.py `initialize_weights` / `_init_weights`) --------
# Each rule leaves tensors on the meta device alone: there is nothing to fill, the caller loads real weights.
def init_official_(module: nn.Module) -> None:
    """The official `_init_weights`: xavier-uniform Linear weights, zero biases, LayerNorm 1 / 0.

    Meant for `module.apply(init_official_)`.
    """
    if isinstance(module, nn.Linear) and not module.weight.is_meta:
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.weight is not None and not module.weight.is_meta:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def init_patch_embed_(proj: nn.Conv2d) -> None:
    """Xavier-uniform over the flattened (C*p*p) patch, as if the projection were a Linear; the bias keeps
    the Conv2d default, as in the official code."""
    w = proj.weight
    if not w.is_meta:
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))


def init_token_(token: torch.Tensor) -> None:
    """cls and mask tokens: normal(std=0.02) (timm's trunc_normal_ is not used here: the official code
    calls torch.nn.init.normal_)."""
    if not token.is_meta:
        nn.init.normal_(token, std=0.02)


def init_fresh_(model: nn.Module, names: Collection[str]) -> None:
    """The official init for exactly the parameters `names` (state-dict keys) of `model`, rule by rule.

    Used after a load for what the file did not hold: a module with such a parameter gets its rule
    (the patch projection `init_patch_embed_`, Linear and LayerNorm `init_official_`), a token of the
    model itself `init_token_`. Position tables and heads are the model's own business.
    """
    wanted = set(names)
    for prefix, module in model.named_modules():
        own = {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
        if module is model or not own & wanted:
            continue
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()  # the Conv2d default for the bias, then the official weight rule
            init_patch_embed_(module)
        else:
            init_official_(module)
    for name, param in model.named_parameters(recurse=False):
        if name in wanted and name.endswith("_token"):
            init_token_(param)


def check_images(imgs: torch.Tensor, in_chans: int, img_size: tuple[int, int], size_hint: str = "", *,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """Validate a model input batch (N, C, H, W) with one clear sentence per problem, never `assert`, and
    return it in `dtype` (the model's weight dtype; None keeps it).

    The one cast of an input: float64 from numpy, float16 or bfloat16 becomes the weights' dtype here, at
    entry, so that every later step (the encoder, the loss target) sees the same images; float16 and
    bfloat16 widen to float32 exactly. Integer, bool and complex batches are refused (images are
    normalised floats), and so are an empty batch and images holding NaN or infinite values (also those
    that only overflow in the cast, such as float64 values beyond float32's range).
    """
    if not isinstance(imgs, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(imgs).__name__}")
    if imgs.dim() != 4:
        raise invalid_argument("imgs", (
            f"images must be a 4-D batch (N, {in_chans}, H, W), got shape {tuple(imgs.shape)}; "
            "add a batch dimension with imgs.unsqueeze(0)"))
    if not imgs.is_floating_point():
        raise invalid_argument("imgs", f"images must be floating point (normalised), got dtype {imgs.dtype}; "
                               "convert them with imgs.float() after normalising")
    if imgs.shape[1] != in_chans:
        raise invalid_argument("imgs", f"images must have {in_chans} channels, got {imgs.shape[1]} "
                               f"(shape {tuple(imgs.shape)})")
    if tuple(imgs.shape[2:]) != tuple(img_size):
        raise invalid_argument("imgs", (
            f"images must be {img_size[0]}x{img_size[1]} for this model, got {imgs.shape[2]}x{imgs.shape[3]}; "
            f"resize them or build the model with img_size=({imgs.shape[2]}, {imgs.shape[3]}){size_hint}"))
    if imgs.shape[0] == 0:
        raise invalid_argument("imgs", f"the image batch is empty (shape {tuple(imgs.shape)}); give at least one image")
    given = imgs
    if dtype is not None and imgs.dtype != dtype:
        imgs = imgs.to(dtype)
    # A value check of the eager input: torch.export (the ONNX export) traces the shapes alone, and an exported
    # graph cannot raise, so it is left out of the graph (torch >= 2.6 says when it is exporting).
    if getattr(torch.compiler, "is_exporting", lambda: False)():
        return imgs
    if torch.compiler.is_compiling():
        _assert_finite_in_graph(imgs)
        return imgs
    if not bool(torch.isfinite(imgs).all()):
        bad = (~torch.isfinite(imgs)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        overflow = [i for i in bad if bool(torch.isfinite(given[i]).all())]
        which = f"image {bad[0]}" if len(bad) == 1 else f"images {short_list([str(i) for i in bad], 5)}"
        verb, them = ("holds", "it") if len(bad) == 1 else ("hold", "them")
        if len(overflow) == len(bad):
            cause = (f"{verb} values beyond the range of {str(imgs.dtype).removeprefix('torch.')}, the model's dtype; "
                     f"normalise {them} (the model expects ImageNet-normalised values of order 1)")
        else:
            cause = f"{verb} NaN or infinite values; drop or repair {them} (torch.nan_to_num) or check the preprocessing"
        raise invalid_argument("imgs", f"{which} of the batch of {imgs.shape[0]} {cause}")
    return imgs


COMPILED_NONFINITE = ("the image batch holds NaN or infinite values (a compiled forward checks the batch as a whole); "
                      "drop or repair the images (torch.nan_to_num) or check the preprocessing")


def _assert_finite_in_graph(imgs: torch.Tensor) -> None:
    """The value check of `check_images` inside a compiled graph, where reading a value on the host would break the
    graph: on the CPU an assertion op of the graph raises `RuntimeError(COMPILED_NONFINITE)` before any result is
    returned; on an accelerator it is left out (an asynchronous device-side assertion would leave the device unusable
    for the rest of the process), and a NaN input gives NaN outputs, which every job refuses (the loss check of the
    training loop, the result checks of the inference jobs)."""
    if imgs.device.type == "cpu":
        torch._assert_async(torch.isfinite(imgs).all(), COMPILED_NONFINITE)
