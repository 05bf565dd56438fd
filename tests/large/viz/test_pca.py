"""Patch-feature maps: the streaming PCA equals a direct one, colours, foreground."""

from __future__ import annotations

import pytest
import torch

from mae.large.errors import InvalidArgumentError
from mae.large.viz.pca import SIGMAS, CovarianceAccumulator, fit_pca, foreground, project, to_rgb


def tokens(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=gen)
    return torch.randn(n, 10, dim, generator=gen) @ mix + 3.0  # correlated, off-centre


def direct_pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Components (k, D) and variances (k,) from an SVD of the centred, concatenated tokens."""
    flat = x.reshape(-1, x.shape[-1]).double()
    centred = flat - flat.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:k], s[:k] ** 2 / (flat.shape[0] - 1)


def test_streaming_joint_pca_equals_direct_pca_up_to_sign() -> None:
    batches = [tokens(3, seed=s) for s in range(4)]
    acc = CovarianceAccumulator(8)
    for b in batches:
        acc.update(b)  # one batch at a time: only D x D sums are kept
    basis = acc.fit(3)
    comps, var = direct_pca(torch.cat(batches), 3)
    assert basis.count == 4 * 3 * 10
    assert torch.allclose(basis.variance, var, rtol=1e-9)
    signs = (basis.components * comps).sum(1).sign()
    assert torch.allclose(basis.components, comps * signs[:, None], atol=1e-9)
    # Projections agree up to the same signs.
    joint = torch.cat(batches)
    centred = joint.reshape(-1, 8).double() - joint.reshape(-1, 8).double().mean(0)
    assert torch.allclose(project(joint, basis).reshape(-1, 3).double(), (centred @ comps.T) * signs, atol=1e-4)


def test_sign_is_deterministic_and_order_of_batches_does_not_matter() -> None:
    a, b = tokens(2, seed=1), tokens(2, seed=2)
    one = fit_pca(torch.cat([a, b]))
    acc = CovarianceAccumulator(8)
    acc.update(b)
    acc.update(a)
    two = acc.fit(3)
    assert torch.allclose(one.components, two.components, atol=1e-9)
    assert bool((one.components.gather(1, one.components.abs().argmax(1, keepdim=True)) > 0).all())


def test_colours_share_one_scale() -> None:
    basis = fit_pca(tokens(2))
    coords = torch.tensor([[0.0, 0.0, 0.0], [1e9, -1e9, 0.0]])
    rgb = to_rgb(coords, basis)
    assert rgb[0].tolist() == [0.5, 0.5, 0.5] and rgb[1].tolist() == [1.0, 0.0, 0.5]
    edge = torch.tensor([[SIGMAS * basis.variance[0].sqrt().item(), 0.0, 0.0]])
    assert torch.allclose(to_rgb(edge, basis)[0, 0], torch.tensor(1.0))


def test_foreground_is_the_smaller_side_of_the_first_component() -> None:
    first = torch.tensor([[1.0, -1.0, -2.0, -3.0], [1.0, 2.0, 3.0, -1.0]])
    assert foreground(first).tolist() == [[True, False, False, False], [False, False, False, True]]


def test_bad_inputs() -> None:
    with pytest.raises(InvalidArgumentError, match="at least 2 tokens"):
        CovarianceAccumulator(4).fit(3)
    with pytest.raises(InvalidArgumentError, match="tokens must be"):
        CovarianceAccumulator(4).update(torch.zeros(3, 5))
    with pytest.raises(InvalidArgumentError, match="k must be"):
        fit_pca(torch.randn(10, 4), k=5)
