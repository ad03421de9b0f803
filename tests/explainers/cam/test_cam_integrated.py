"""Integrated Grad-CAM: its one-step limit, a closed form, and convergence in the steps."""

from __future__ import annotations

import torch
from cam_models import gap_net, images, make_handle

from workers.explainers import ModelHandle
from workers.explainers.cam import cam_maps
from workers.explainers.cam.integrated_gradcam import integrated_gradcam_maps


def homogeneous_handle() -> ModelHandle:
    """A bias-free ReLU net: A(t·x) = t·A(x) for t > 0, and A(0) = 0."""
    return make_handle(gap_net(bias=False))


def test_one_step_with_a_zero_baseline_is_gradcam() -> None:
    handle = homogeneous_handle()
    x, targets = images(3), torch.tensor([0, 2, 4])
    zero = torch.zeros(1, 3, 32, 32)
    result = integrated_gradcam_maps(handle, x, targets, "features", steps=1, baseline=zero)
    _, gradcam = cam_maps("gradcam", handle, x, targets, "features")
    torch.testing.assert_close(result.maps, gradcam)


def test_a_linear_path_gives_the_riemann_sum_closed_form() -> None:
    """A(x_m) = (m/M)·A(x) and a constant gradient: L_M = (M + 1)/(2M) · Grad-CAM."""
    handle = homogeneous_handle()
    x, targets = images(2, seed=9), torch.tensor([1, 3])
    zero = torch.zeros(1, 3, 32, 32)
    _, gradcam = cam_maps("gradcam", handle, x, targets, "features")
    for steps in (2, 7, 50):
        result = integrated_gradcam_maps(
            handle, x, targets, "features", steps=steps, baseline=zero, max_batch_size=16
        )
        torch.testing.assert_close(result.maps, gradcam * (steps + 1) / (2 * steps))


def test_more_steps_converge_on_a_nonlinear_path() -> None:
    """With biases and the black baseline the integrand is not linear; the error shrinks ~1/M."""
    handle = make_handle()
    x, targets = images(2, seed=5), torch.tensor([2, 0])

    def raw(steps: int) -> torch.Tensor:
        return cam_maps(
            "integrated_gradcam", handle, x, targets, "features.3", steps=steps, max_batch_size=256
        )[1]

    limit = raw(640)
    errors = [float((raw(m) - limit).abs().max()) for m in (5, 20, 80)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 8


def test_default_baseline_is_black_in_display_space() -> None:
    handle = make_handle()
    x, targets = images(1), torch.tensor([1])
    black = handle.from_display(torch.zeros(1, 3, 32, 32))
    explicit = integrated_gradcam_maps(handle, x, targets, None, steps=3, baseline=black)
    default = integrated_gradcam_maps(handle, x, targets, None, steps=3)
    torch.testing.assert_close(explicit.maps, default.maps)
    assert default.meta["forward_passes"] == 4
