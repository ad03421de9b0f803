"""The building blocks: optimisers, filters, smooth masks, blur pyramid, area penalty, loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.explainers.optimisation.optimisation_models import MEAN, STD
from workers.explainers.base import ModelHandle
from workers.explainers.optimisation.filters import (
    gaussian_blur,
    gaussian_kernel1d,
    laplacian_kernel,
    total_variation,
)
from workers.explainers.optimisation.loop import PROGRESS_EVERY, Budget, minimise
from workers.explainers.optimisation.mp_init import circle_init
from workers.explainers.optimisation.optimisers import Adam, RMSPropTF1, SGDMomentum
from workers.explainers.optimisation.smooth_masks import (
    BlurPyramid,
    SmoothMaskGenerator,
    area_penalty,
)
from workers.explainers.optimisation.softmax_pool import _SoftmaxPool

CPU = torch.device("cpu")


def gradients(seed: int, steps: int, shape: tuple[int, ...] = (3, 5)) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(steps)]


def run_ours(optimiser: Adam | RMSPropTF1 | SGDMomentum, grads: list[Tensor]) -> Tensor:
    params = torch.ones_like(grads[0])
    state = optimiser.init_state(params)
    for t, grad in enumerate(grads):
        optimiser.step(params, grad, state, t)
    return params


def run_torch(make: type[torch.optim.Optimizer], grads: list[Tensor], **kwargs: float) -> Tensor:
    params = torch.nn.Parameter(torch.ones_like(grads[0]))
    optimiser = make([params], **kwargs)
    for grad in grads:
        params.grad = grad.clone()
        optimiser.step()
    return params.detach()


def test_adam_is_torch_adam() -> None:
    grads = gradients(0, 12)
    ours = run_ours(Adam(lr=0.1), grads)
    theirs = run_torch(torch.optim.Adam, grads, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_sgd_with_momentum_and_dampening_is_torch_sgd() -> None:
    grads = gradients(1, 12)
    ours = run_ours(SGDMomentum(lr=0.01, momentum=0.9, dampening=0.9), grads)
    theirs = run_torch(torch.optim.SGD, grads, lr=0.01, momentum=0.9, dampening=0.9)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_rmsprop_from_zero_is_torch_rmsprop() -> None:
    grads = gradients(2, 12)
    ours = run_ours(RMSPropTF1(lr=0.03, decay=0.9, eps=0.0, ms_init=0.0), grads)
    theirs = run_torch(torch.optim.RMSprop, grads, lr=0.03, alpha=0.9, eps=0.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_rmsprop_tf1_first_step_uses_a_unit_accumulator() -> None:
    (grad,) = gradients(3, 1)
    ours = run_ours(RMSPropTF1(lr=0.03), [grad])
    expected = 1 - 0.03 * grad / torch.sqrt(0.9 + 0.1 * grad**2 + 1e-10)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_total_variation_by_hand() -> None:
    mask = torch.tensor([[0.0, 1.0], [0.0, 0.5]], dtype=torch.float64).view(1, 1, 2, 2)
    # (0,0): down 0, right 1 -> 1; (0,1): down -0.5 -> 0.25; (1,0): right 0.5 -> 0.25; (1,1): 0.
    for beta in (1.0, 2.0, 3.0):
        expected = 1.0 + 2 * 0.25 ** (beta / 2)
        assert total_variation(mask, beta).item() == pytest.approx(expected, rel=1e-9)
    flat = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(total_variation(flat, 1.0).sum(), flat)
    assert torch.isfinite(grad).all()


def test_gaussian_blur_keeps_constants_and_mass() -> None:
    kernel = gaussian_kernel1d(2.5, device=CPU, dtype=torch.float64)
    assert kernel.numel() == 2 * math.ceil(4 * 2.5) + 1
    assert kernel.sum().item() == pytest.approx(1.0)
    constant = torch.full((1, 3, 9, 9), 0.7, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(constant, 4.0), constant)  # replicate padding
    spike = torch.zeros(1, 1, 41, 41, dtype=torch.float64)
    spike[..., 20, 20] = 1.0
    blurred = gaussian_blur(spike, 3.0, padding="zeros")
    assert blurred.sum().item() == pytest.approx(1.0)  # the kernel fits: nothing lost
    assert blurred[..., 20, 20].item() == pytest.approx(kernel_peak(3.0) ** 2)
    assert gaussian_blur(spike, 0.0) is spike


def kernel_peak(sigma: float) -> float:
    radius = math.ceil(4 * sigma)
    weights = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    return 1.0 / sum(weights)


def test_laplacian_kernel_is_zero_sum_with_the_papers_centre() -> None:
    for size, centre in ((3, 8.0), (5, 24.0)):
        kernel = laplacian_kernel(size, device=CPU, dtype=torch.float32)
        assert kernel.shape == (1, 1, size, size)
        assert kernel.sum().item() == 0.0
        assert kernel[0, 0, size // 2, size // 2].item() == centre


def test_smooth_mask_of_one_grid_point_is_a_flat_topped_blob() -> None:
    generator = SmoothMaskGenerator((40, 40), step=4, sigma=8.0, device=CPU)
    assert generator.grid == (10, 10)
    params = torch.zeros(3, 1, 10, 10)
    params[1] = 1.0
    params[2, 0, 4, 6] = 1.0
    masks = generator(params)
    assert masks.shape == (3, 1, 40, 40)
    assert masks.min() >= 0 and masks.max() <= 1
    assert masks[0].abs().max() == 0  # all-zero parameters: nothing kept
    assert masks[1].min() > 0.97  # all ones: everything (up to the soft pooling)
    # Grid point (4, 6) sits at the centre of cell rows 16..19, cols 24..27: (17.5, 25.5).
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    distance = torch.sqrt((ys - 17.5) ** 2 + (xs - 25.5) ** 2)
    blob = masks[2, 0]
    assert blob[distance <= 4.0].min() > 0.99  # flat top within σ/2
    assert blob[distance >= 3 * 8.0].max() < 0.01
    assert blob.argmax().item() in torch.nonzero((distance <= 4.0).flatten()).flatten().tolist()


@pytest.mark.parametrize(("band", "samples"), [(1, 2), (3, 1), (100, 2)])
def test_softmax_pool_equals_the_autograd_expression(band: int, samples: int) -> None:
    generator = torch.Generator().manual_seed(0)
    params = torch.rand(2, 1, 5, 4, generator=generator, dtype=torch.float64)
    kernel = torch.rand(1, 9, 1, 3, 1, 3, generator=generator, dtype=torch.float64)
    upstream = torch.randn(2, 5, 3, 4, 3, generator=generator, dtype=torch.float64)
    ours_in = params.clone().requires_grad_(True)
    ours = _SoftmaxPool.apply(ours_in, kernel, 20.0, band, 1, samples)
    (ours_grad,) = torch.autograd.grad((ours * upstream).sum(), ours_in)
    ref_in = params.clone().requires_grad_(True)
    patches = F.unfold(ref_in, 3, padding=1).view(2, 9, 5, 4)  # the whole unfold, as autograd
    weighted = patches[:, :, :, None, :, None] * kernel
    ref = (weighted * torch.softmax(20.0 * weighted, dim=1)).sum(dim=1)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), ref_in)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-10, atol=1e-10)


def test_blur_pyramid_interpolates_levels_linearly() -> None:
    inputs = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    pyramid = BlurPyramid(inputs, levels=5, max_blur=4.0)
    images = torch.tensor([1, 0])
    ones = torch.ones(2, 1, 24, 24)
    torch.testing.assert_close(pyramid.apply(ones, images), inputs[[1, 0]])
    most = gaussian_blur(inputs, 4.0, padding="zeros")[[1, 0]]
    torch.testing.assert_close(pyramid.apply(0 * ones, images), most)
    level1 = gaussian_blur(inputs, 3.0, padding="zeros")[[1, 0]]
    torch.testing.assert_close(pyramid.apply(0.25 * ones, images), level1)
    torch.testing.assert_close(pyramid.apply(0.125 * ones, images), (most + level1) / 2)


def test_area_penalty_is_zero_for_an_exact_binary_mask() -> None:
    masks = torch.zeros(2, 1, 10, 10)
    masks[0, 0, :2, :5] = 1.0  # area 0.1
    masks[1, 0, :4, :] = 1.0  # area 0.4
    areas = torch.tensor([0.1, 0.4])
    assert area_penalty(masks, areas).abs().max().item() == 0.0
    everything = torch.ones(2, 1, 10, 10)
    torch.testing.assert_close(area_penalty(everything, areas), 1 - areas)


def quadratic_rows(targets: Tensor) -> tuple[Tensor, object]:
    """Row ``i`` minimises ``Σ (p_i − targets_i)²``; returns (init, loss_fn)."""

    def loss_fn(params: Tensor, rows: Tensor, t: int) -> Tensor:
        return ((params - targets[rows]) ** 2).flatten(1).sum(dim=1)

    return torch.zeros_like(targets), loss_fn


def test_minimise_gives_every_row_what_it_would_get_alone() -> None:
    targets = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(5)).double()
    budget = Budget(iterations=25)
    init, loss_fn = quadratic_rows(targets)
    together = minimise(loss_fn, init, Adam(lr=0.1), budget)
    for row in range(4):
        init_one, loss_one = quadratic_rows(targets[row : row + 1])
        alone = minimise(loss_one, init_one, Adam(lr=0.1), budget)
        torch.testing.assert_close(together.params[row], alone.params[0], rtol=0, atol=0)
    assert together.steps.tolist() == [25] * 4


def test_early_stop_freezes_a_converged_row_and_lets_the_others_run() -> None:
    def loss_fn(params: Tensor, rows: Tensor, t: int) -> Tensor:
        slope = torch.tensor([0.0, 1.0])[rows]  # row 0 has nothing to improve
        return (params.flatten(1) * slope[:, None]).sum(dim=1) + 0 * params.sum()

    init = torch.zeros(2, 1, 2, 2)
    outcome = minimise(loss_fn, init, SGDMomentum(lr=0.1), Budget(40, True, patience=5))
    assert outcome.steps.tolist() == [6, 40]  # one improvement from +inf, then 5 without
    assert outcome.params[0].abs().max() == 0
    assert (outcome.params[1] < 0).all()


def test_progress_is_reported_every_few_iterations_and_may_stop_the_loop() -> None:
    targets = torch.zeros(1, 1, 2, 2)
    init, loss_fn = quadratic_rows(targets)
    seen: list[int] = []
    minimise(loss_fn, init + 1, Adam(lr=0.1), Budget(25), on_step=seen.append)
    assert {PROGRESS_EVERY, 2 * PROGRESS_EVERY, 25} <= set(seen)
    assert seen == sorted(seen) and seen[-1] == 25

    def stop(t: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        minimise(loss_fn, init + 1, Adam(lr=0.1), Budget(25), on_step=stop)


class CentreModel(torch.nn.Module):
    """Two classes; class 0 is the mean of channel 0 over the central 6×6 square."""

    def forward(self, x: Tensor) -> Tensor:
        centre = x[:, 0, 13:19, 13:19].mean(dim=(1, 2)) * 4
        return torch.stack([centre, torch.zeros_like(centre)], dim=1)


def test_circle_init_deletes_a_disc_that_covers_what_the_model_looks_at() -> None:
    handle = ModelHandle("centre", CentreModel(), (32, 32), mean=MEAN, std=STD)
    inputs = torch.full((2, 3, 32, 32), -1.0)
    inputs[0, :, 12:20, 12:20] = 2.0  # a bright centre: deleting it matters
    blurred = gaussian_blur(inputs, 2.0)
    targets = torch.tensor([0, 0])
    original = handle.evaluate(inputs).softmax(dim=1)[:, 0]
    masks, passes = circle_init(handle, inputs, blurred, targets, original, (8, 8), bs=16)
    assert passes == 35  # beyond the clean pass
    assert masks.shape == (2, 1, 8, 8)
    assert masks[0, 0, 3:5, 3:5].max() < 0.2  # the centre starts deleted
    assert masks[0, 0, 0, 0] > 0.9 and masks[0, 0, 0, 7] > 0.9  # the corners kept
    # Image 1 is flat: no disc changes the score, so the largest disc is taken.
    assert masks[1].mean() < masks[0].mean()
