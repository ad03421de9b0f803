"""Each CAM formula on hand-built activations and gradients equals its paper equation.

The references below are written index by index, straight from the papers' equations, so they
share no code with the vectorised implementations under test.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from workers.explainers.cam import formulas

B, K, H, W = 2, 3, 4, 5


def hand_built(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative activations (as after a ReLU) and signed gradients, in float64."""
    generator = torch.Generator().manual_seed(seed)
    A = torch.rand(B, K, H, W, generator=generator, dtype=torch.float64) * 3
    G = torch.randn(B, K, H, W, generator=generator, dtype=torch.float64)
    A[0, 1, 2, 3] = 0.0
    G[1, 2, 0, 0] = 0.0  # a zero gradient: α must be 0 there
    return A, G


def positions() -> list[tuple[int, int]]:
    return list(itertools.product(range(H), range(W)))


def reference_map(weights: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(B, H, W, dtype=A.dtype)
    for b, k, (i, j) in itertools.product(range(B), range(K), positions()):
        out[b, i, j] += weights[b, k] * A[b, k, i, j]
    return out


def test_gradcam_weights_are_the_average_gradient() -> None:
    A, G = hand_built()
    for b, k in itertools.product(range(B), range(K)):
        expected = sum(G[b, k, i, j] for i, j in positions()) / (H * W)
        assert formulas.gradcam_weights(A, G)[b, k] == pytest.approx(float(expected), rel=1e-12)


def test_weighted_sum_is_sum_over_channels() -> None:
    A, G = hand_built()
    weights = formulas.gradcam_weights(A, G)
    torch.testing.assert_close(formulas.weighted_sum(weights, A), reference_map(weights, A))


def reference_gradcam_pp(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Chattopadhyay et al. eq. with exp(S) dropped: channel-sum of A times local g³."""
    weights = torch.zeros(B, K, dtype=A.dtype)
    for b, k in itertools.product(range(B), range(K)):
        channel_sum = sum(A[b, k, a, c] for a, c in positions())
        for i, j in positions():
            g = G[b, k, i, j]
            if g == 0:
                continue
            alpha = g**2 / (2 * g**2 + channel_sum * g**3)
            weights[b, k] += alpha * max(g, 0.0)
    return weights


def test_gradcam_pp_weights_follow_the_paper_denominator() -> None:
    A, G = hand_built()
    torch.testing.assert_close(formulas.gradcam_pp_weights(A, G), reference_gradcam_pp(A, G))


def test_gradcam_pp_does_not_use_the_mixed_index_denominator() -> None:
    """The popular variant Σ_ab A(a,b)·g³(a,b) gives different weights on the same tensors."""
    A, G = hand_built()
    g2, g3 = G**2, G**3
    mixed = g2 / (2 * g2 + (A * g3).sum(dim=(2, 3), keepdim=True))
    mixed = torch.where(G != 0, mixed, 0.0)
    mixed_weights = (mixed * torch.relu(G)).sum(dim=(2, 3))
    assert not torch.allclose(formulas.gradcam_pp_weights(A, G), mixed_weights)


def test_gradcam_pp_with_a_constant_gradient_has_a_closed_form() -> None:
    """A gradient constant over positions (a GAP + linear head) gives, from the paper's
    equations, ``w_k = hw · g²/(2g² + S_k g³) · ReLU(g)`` with ``S_k = Σ_ab A_k(a, b)``.
    """
    A, _ = hand_built()
    g = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]], dtype=torch.float64)
    G = g.view(B, K, 1, 1).expand(B, K, H, W).clone()
    S = A.sum(dim=(2, 3))
    expected = H * W * g**2 / (2 * g**2 + S * g**3) * torch.relu(g)
    torch.testing.assert_close(formulas.gradcam_pp_weights(A, G), expected)


def test_moments_of_a_single_gradient_reduce_to_gradcam_pp() -> None:
    A, G = hand_built()
    torch.testing.assert_close(
        formulas.gradcam_pp_weights_from_moments(A, G, G**2, G**3),
        formulas.gradcam_pp_weights(A, G),
    )


def test_smooth_moments_use_d2_over_2d2_plus_sum_a_d3_and_relu_d1() -> None:
    """Smooth Grad-CAM++ step 4-5 with averaged moments of three 'noisy' gradients."""
    A, _ = hand_built()
    generator = torch.Generator().manual_seed(3)
    gs = torch.randn(3, B, K, H, W, generator=generator, dtype=torch.float64)
    d1, d2, d3 = gs.mean(0), (gs**2).mean(0), (gs**3).mean(0)
    weights = torch.zeros(B, K, dtype=A.dtype)
    for b, k in itertools.product(range(B), range(K)):
        channel_sum = A[b, k].sum()
        for i, j in positions():
            alpha = d2[b, k, i, j] / (2 * d2[b, k, i, j] + channel_sum * d3[b, k, i, j])
            weights[b, k] += alpha * max(d1[b, k, i, j], 0.0)
    torch.testing.assert_close(formulas.gradcam_pp_weights_from_moments(A, d1, d2, d3), weights)


def test_positions_restrict_the_weight_sum_to_one_neuron() -> None:
    A, G = hand_built()
    where = torch.zeros(H, W, dtype=torch.bool)
    where[1, 2] = True
    weights = formulas.gradcam_pp_weights_from_moments(A, G, G**2, G**3, where)
    S = A.sum(dim=(2, 3))
    g = G[:, :, 1, 2]
    expected = torch.where(g != 0, g**2 / (2 * g**2 + S * g**3), 0.0) * torch.relu(g)
    torch.testing.assert_close(weights, expected)


def test_xgradcam_weights_are_activation_weighted_gradients() -> None:
    A, G = hand_built()
    for b, k in itertools.product(range(B), range(K)):
        numerator = sum(G[b, k, i, j] * A[b, k, i, j] for i, j in positions())
        denominator = sum(A[b, k, i, j] for i, j in positions()) + formulas.EPS
        got = formulas.xgradcam_weights(A, G)[b, k]
        assert float(got) == pytest.approx(float(numerator / denominator), rel=1e-12)


def test_layercam_uses_per_position_positive_gradients() -> None:
    A, G = hand_built()
    expected = torch.zeros(B, H, W, dtype=A.dtype)
    for b, k, (i, j) in itertools.product(range(B), range(K), positions()):
        expected[b, i, j] += max(G[b, k, i, j], 0.0) * A[b, k, i, j]
    torch.testing.assert_close(formulas.layercam_raw(A, G), expected)


def test_layercam_fusion_scales_shallow_layers_with_tanh_and_takes_the_max() -> None:
    generator = torch.Generator().manual_seed(5)
    shallow = torch.rand(B, 4, 4, generator=generator, dtype=torch.float64)
    deep = torch.rand(B, 4, 4, generator=generator, dtype=torch.float64)
    fused = formulas.fuse_layercam([shallow, deep], gamma=2.0)
    peak_s = shallow.flatten(1).amax(1).view(-1, 1, 1)
    peak_d = deep.flatten(1).amax(1).view(-1, 1, 1)
    expected = torch.maximum(torch.tanh(2.0 * shallow / peak_s), deep / peak_d)
    torch.testing.assert_close(fused, expected)


def test_layercam_fusion_resizes_the_coarse_map_to_the_finest_grid() -> None:
    shallow = torch.zeros(1, 4, 4, dtype=torch.float64)
    shallow[0, 0, 0] = 1.0
    deep = torch.full((1, 2, 2), 3.0, dtype=torch.float64)
    fused = formulas.fuse_layercam([shallow, deep], gamma=2.0)
    assert fused.shape == (1, 4, 4)
    torch.testing.assert_close(fused, torch.ones(1, 4, 4, dtype=torch.float64))
