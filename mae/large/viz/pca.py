"""Patch-feature maps: the first principal components of patch tokens, as colours (the DINO / DINOv2 figures).

The principal components come from the covariance of the tokens (D x D), which a `CovarianceAccumulator`
sums batch by batch in float64, so a joint PCA over a whole folder needs memory for one D x D matrix, not
for the tokens: a first pass accumulates, `fit` takes the eigenvectors, a second pass projects.

Colours: component j of a token is mapped to channel j as `0.5 + value / (2 * SIGMAS * sqrt(variance_j))`,
clipped to [0, 1] (+-2 standard deviations span the range). The scale depends on the fitted basis only, so
every image projected with one basis shares one colour space, and nothing has to be kept between images.

Foreground: the sign of the first component splits the patches in two; the side holding fewer of an
image's patches is taken as the foreground (an object usually covers less than half of the picture), a
heuristic as in the DINOv2 figures.

Each component's sign is arbitrary in PCA; here the largest-magnitude entry of each component is made
positive, so the same tokens always give the same colours.

Explained variance: each component's variance over the tokens' total variance (the covariance's trace),
`explained_share`.

A near-uniform image (`uniform_warning`): the rule is on the model input's pixels, not on the tokens. When
every colour channel's standard deviation over the image is below `UNIFORM_PIXEL_STD` (2% of the range, about
5 of 255 levels), the patches are (nearly) all the same, and the tokens differ by their position embeddings
alone: the PCA still finds three directions and the map still shows "structure" and a "foreground", but they
are the grid's positions, not the image's content. The tokens' own variance cannot tell this case apart:
position alone gives them a variance that depends on the model (with the tests' small model a grey image's
tokens vary a few percent as much as a picture's), so no threshold on it would hold for every checkpoint.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..data.images import denormalize
from ..errors import invalid_argument

__all__ = ["SIGMAS", "UNIFORM_PIXEL_STD", "CovarianceAccumulator", "PCABasis", "explained_share", "fit_pca",
           "foreground", "pixel_spread", "project", "to_rgb", "uniform_warning"]

SIGMAS = 2.0  # +-SIGMAS standard deviations of a component span its colour channel
UNIFORM_PIXEL_STD = 0.02  # an image whose every channel varies less than this (pixels in [0, 1]) is near-uniform


class PCABasis(NamedTuple):
    mean: torch.Tensor  # (D,) float64
    components: torch.Tensor  # (k, D) float64, orthonormal rows, by decreasing variance
    variance: torch.Tensor  # (k,) float64: the variance along each component (covariance eigenvalues)
    count: int  # tokens the basis was fitted on
    total: float = math.nan  # the tokens' total variance (the covariance's trace): what the components explain part of


class CovarianceAccumulator:
    """Sums of tokens and of their outer products, in float64, for a PCA that streams over many batches."""

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise invalid_argument("dim", f"dim must be a positive integer (the token width), got {dim!r}")
        self.dim = dim
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, tokens: torch.Tensor) -> None:
        """Add tokens (..., D): every leading dimension is flattened into the token count."""
        if not isinstance(tokens, torch.Tensor) or tokens.shape[-1] != self.dim:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise invalid_argument("tokens", f"tokens must be (..., {self.dim}), got {shape}")
        t = tokens.detach().reshape(-1, self.dim).to(device="cpu", dtype=torch.float64)  # (M, D)
        self.count += t.shape[0]
        self.sum += t.sum(dim=0)
        self.outer += t.T @ t

    def fit(self, k: int = 3) -> PCABasis:
        """The first `k` principal components of every token added so far."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.dim:
            raise invalid_argument("k", f"k must be an integer from 1 to the token width {self.dim}, got {k!r}")
        if self.count < 2:
            raise invalid_argument("tokens", f"a PCA needs at least 2 tokens, got {self.count}")
        mean = self.sum / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)  # (D, D)
        cov = (cov + cov.T) / 2  # exactly symmetric for eigh
        values, vectors = torch.linalg.eigh(cov)  # ascending
        order = torch.arange(self.dim - 1, self.dim - 1 - k, -1)
        components = vectors[:, order].T.contiguous()  # (k, D), largest variance first
        peak = components.abs().argmax(dim=1, keepdim=True)
        components = components * torch.gather(components, 1, peak).sign()  # sign: largest entry positive
        total = float(torch.diagonal(cov).sum().clamp_min(0.0))
        return PCABasis(mean, components, values[order].clamp_min(0.0), self.count, total)


def fit_pca(tokens: torch.Tensor, k: int = 3) -> PCABasis:
    """The first `k` principal components of tokens (..., D), in one go."""
    acc = CovarianceAccumulator(tokens.shape[-1])
    acc.update(tokens)
    return acc.fit(k)


def project(tokens: torch.Tensor, basis: PCABasis) -> torch.Tensor:
    """Tokens (..., D) -> their coordinates along the basis (..., k), float32."""
    t = tokens.detach().to(device="cpu", dtype=torch.float64)
    return ((t - basis.mean) @ basis.components.T).float()


def to_rgb(coords: torch.Tensor, basis: PCABasis) -> torch.Tensor:
    """Coordinates (..., 3) -> colours (..., 3) in [0, 1], one scale per component (see the module docstring)."""
    if coords.shape[-1] != 3 or basis.variance.shape[0] < 3:
        raise invalid_argument("coords", f"colours need 3 components, got coordinates of width {coords.shape[-1]} "
                                         f"from a basis of {basis.variance.shape[0]}")
    scale = 2 * SIGMAS * basis.variance[:3].sqrt().clamp_min(1e-12).float()  # (3,)
    return (0.5 + coords / scale).clamp(0.0, 1.0)


def foreground(first: torch.Tensor) -> torch.Tensor:
    """The first component of each image's patches (N, L) -> (N, L) bool: the sign side with fewer patches
    (ties: the positive side)."""
    positive = first > 0  # (N, L)
    fewer_positive = positive.sum(dim=1, keepdim=True) * 2 <= first.shape[1]  # (N, 1)
    return torch.where(fewer_positive, positive, ~positive)


def explained_share(basis: PCABasis) -> torch.Tensor:
    """(k,) float64: the share of the tokens' total variance each component explains (NaN when the basis does not
    know its total, or the tokens do not vary at all)."""
    total = float(basis.total)
    if not math.isfinite(total) or total <= 0.0:
        return torch.full_like(basis.variance, math.nan)
    return basis.variance / total


def pixel_spread(image: torch.Tensor) -> float:
    """How much a normalised (3, H, W) model input varies: the largest, over the colour channels, of the standard
    deviation of its pixels in [0, 1]."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise invalid_argument("image", f"image must be a normalised (3, H, W) tensor, got {tuple(image.shape)}")
    pixels = denormalize(image.detach().float().cpu()).flatten(1)  # (3, H * W)
    return float(pixels.std(dim=1, unbiased=False).max())


def uniform_warning(image: torch.Tensor) -> str | None:
    """A warning for a near-uniform normalised (3, H, W) model input (the rule: the module docstring), else None."""
    spread = pixel_spread(image)
    if spread >= UNIFORM_PIXEL_STD:
        return None
    return (f"near-uniform image (pixel standard deviation {spread:.3f} < {UNIFORM_PIXEL_STD}): its patches differ "
            "only by position, so the colours and any foreground show the patch grid, not the image")
