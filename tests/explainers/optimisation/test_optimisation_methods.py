"""The three methods end to end: known answers, areas, batching exactness, model hygiene.

The model's class ``k`` depends only on region ``R_k`` (see :mod:`.optimisation_models`), so
each method's map must concentrate on the target's region and leave the other one alone.
Settings are scaled to 48 px and tens to hundreds of iterations (named per method below).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import Tensor

from app.contract.params.optimisation import (
    ExtremalPerturbationParams,
    MeaningfulPerturbationParams,
    NeuroMaskParams,
    scaled_step,
)
from tests.explainers.optimisation.optimisation_models import (
    region_handle,
    region_masks,
    share_inside,
    square_inputs,
)
from workers.explainers import Cancelled, Explanation, ModelHandle, get_explainer
from workers.explainers.optimisation.extremal_perturbation import geometry
from workers.explainers.optimisation.meaningful_perturbation import geometry as mp_geometry
from workers.explainers.optimisation.neuromask import MIN_EVIDENCE, prediction_floors
from workers.explainers.perturbation.engine import blur_fill

FAST: dict[str, dict[str, Any]] = {
    # 28×28 cells at 224 px is 8 px a cell; at 48 px a 12×12 grid, blurs scaled down.
    "meaningful_perturbation": {
        "iterations": 100, "mask_scale": 4, "mask_blur": 2.0, "blur_sigma": 3.0, "jitter": 2,
    },
    # Grid step and kernel scaled to 48 px; λ scaled by the pixel count (the penalty is a
    # mean over pixels), SGD steps larger so that 100 iterations do the work of 800.
    "extremal_perturbation": {
        "iterations": 100, "areas": (0.0625,), "step": 4, "sigma": 8.0, "max_blur": 6.0,
        "smooth": 0.0, "learning_rate": 0.05, "area_lambda": 30.0, "area_growth": 1.03,
    },
    # RMSProp from a zero accumulator and a narrower initial range: 300 iterations suffice.
    "neuromask": {"iterations": 300, "rms_init": 0.0, "weight_limit": 3.0},
}  # fmt: skip
REGIONS = region_masks()
TARGETS = torch.tensor([0, 1])


def explain(name: str, handle: ModelHandle, inputs: Tensor, targets: Tensor, **kw: Any) -> Any:
    return get_explainer(name)(handle, inputs, targets, **{**FAST[name], **kw})


@pytest.mark.parametrize("name", sorted(FAST))
def test_the_map_concentrates_on_the_region_the_target_depends_on(name: str) -> None:
    handle, inputs = region_handle("brightness"), square_inputs(2)
    result: Explanation = explain(name, handle, inputs, TARGETS)
    assert result.saliency.shape == (2, 48, 48) and result.saliency.dtype == torch.float32
    for row, (own, other) in enumerate(((0, 1), (1, 0))):
        saliency = result.saliency[row]
        peak = saliency.max()
        assert saliency[REGIONS[own]].mean() > 0.5 * peak, "the target's region is not in it"
        assert saliency[REGIONS[other]].mean() < 0.05 * peak, "the other class's region is"
        assert share_inside(saliency, REGIONS[own]) > 2.0
    iterations = FAST[name]["iterations"]
    assert all(meta["backward_passes"] in (iterations, [iterations]) for meta in result.meta)


@pytest.mark.parametrize(
    "setting",
    [
        {},
        {
            "fill": "black",
            "init_limit": 10.0,
            "mask_sigma": 0.0,
            "sparsity_growth": 1.0,
            "keep_prediction": 0.0,
            "jitter": 0,
            "cap_prediction": False,
        },
    ],
    ids=["defaults", "the-authors-code"],
)
def test_neuromask_with_the_service_and_the_code_defaults_concentrates_too(
    setting: dict[str, Any],
) -> None:
    handle, inputs = region_handle("brightness"), square_inputs(2)
    params = NeuroMaskParams.model_validate(setting).model_dump()
    result = get_explainer("neuromask")(handle, inputs, TARGETS, **params)
    for row, (own, other) in enumerate(((0, 1), (1, 0))):
        saliency = result.saliency[row]
        assert share_inside(saliency, REGIONS[own]) > 5.0
        assert saliency[REGIONS[other]].mean() < 0.01
        assert result.meta[row]["iterations"] == 1000


@pytest.mark.parametrize("variant", ["preservation", "deletion"])
def test_extremal_perturbation_meets_every_requested_area(variant: str) -> None:
    handle, inputs = region_handle("brightness"), square_inputs(2)
    areas = (0.0625, 0.15, 0.3)
    result = explain("extremal_perturbation", handle, inputs, TARGETS, areas=areas, variant=variant)
    for meta in result.meta:
        assert meta["mask_areas"] == pytest.approx(areas, abs=0.025)
        assert meta["forward_passes"] == 1 + 3 * FAST["extremal_perturbation"]["iterations"]
    for row, own in enumerate((0, 1)):
        assert share_inside(result.saliency[row], REGIONS[own]) > 3.0


def test_an_extremal_mask_is_nearly_binary_with_the_requested_area() -> None:
    handle, inputs = region_handle("brightness"), square_inputs(1)
    mask = explain("extremal_perturbation", handle, inputs, TARGETS[:1], areas=(0.15,)).saliency
    assert (mask > 0.5).float().mean().item() == pytest.approx(0.15, abs=0.02)
    assert ((mask < 0.1) | (mask > 0.9)).float().mean() > 0.8
    # and the smoothing of the summed map (TorchRay's benchmark) spreads it, keeping the peak
    smoothed = explain(
        "extremal_perturbation", handle, inputs, TARGETS[:1], areas=(0.15,), smooth=0.09
    ).saliency
    assert smoothed.max() < mask.max()
    assert REGIONS[0].flatten()[smoothed.flatten().argmax()]


@pytest.mark.parametrize("name", sorted(FAST))
def test_a_group_gives_each_image_its_own_mask(name: str) -> None:
    """Same masks optimised together, alone, or in chunks (float64: no rounding noise)."""
    handle = region_handle("brightness", torch.float64)
    inputs = square_inputs(3, seed=4, dtype=torch.float64)
    inputs[2] = inputs[2].flip(-1) * 0.8
    targets = torch.tensor([1, 0, 0])
    short = {"iterations": 40}
    together = explain(name, handle, inputs, targets, **short).saliency
    alone = [
        explain(name, handle, inputs[i : i + 1], targets[i : i + 1], **short) for i in range(3)
    ]
    torch.testing.assert_close(together, torch.cat([a.saliency for a in alone]), atol=1e-6, rtol=0)
    chunked = explain(name, handle, inputs, targets, max_batch_size=2, **short).saliency
    torch.testing.assert_close(together, chunked, atol=1e-6, rtol=0)


def neuromask_same_alone_or_in_a_group(handle: ModelHandle, inputs: Tensor, **kw: Any) -> Tensor:
    """NeuroMask's maps of ``inputs`` in one call, checked equal to each image's alone."""
    together = explain("neuromask", handle, inputs, TARGETS, **kw).saliency
    alone = torch.cat(
        [explain("neuromask", handle, inputs[i : i + 1], TARGETS[i : i + 1], **kw).saliency
         for i in range(inputs.shape[0])]
    )  # fmt: skip
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    return together


def test_neuromask_jitter_is_seeded_and_the_same_alone_or_in_a_group() -> None:
    """The jitter's shifts come from the seed, the same for every row of a group (float64)."""
    handle = region_handle("brightness", torch.float64)
    inputs = square_inputs(2, seed=4, dtype=torch.float64)
    kw: dict[str, Any] = {"iterations": 30, "jitter": 40}  # 40 px at 224: 9 px at 48 px
    together = neuromask_same_alone_or_in_a_group(handle, inputs, seed=1, **kw)
    other = explain("neuromask", handle, inputs, TARGETS, seed=2, **kw).saliency
    fixed = explain("neuromask", handle, inputs, TARGETS, seed=1, iterations=30).saliency
    assert not torch.allclose(together, fixed, atol=1e-3)  # the shifts change the masks
    assert not torch.allclose(together, other, atol=1e-3)


def test_neuromask_capped_prediction_term_is_max_zero_ce_minus_the_clean_ce() -> None:
    """With ``cap_prediction`` the prediction term is ``λ_pred · max(0, CE − CE_x)`` per row (known
    answer against the plain objective on the same ``W``, one row above its ceiling and one
    below), and the method is still the same alone or in a group."""
    from workers.explainers.optimisation.filters import laplacian_kernel
    from workers.explainers.optimisation.neuromask import _Objective

    handle = region_handle("brightness", torch.float64)
    inputs = square_inputs(2, seed=4, dtype=torch.float64)
    display = handle.to_display(inputs)
    kernel = laplacian_kernel(5, device=torch.device("cpu"), dtype=torch.float64)
    plain = _Objective(
        handle, display, torch.zeros_like(display), TARGETS, kernel, 0.3, 10.0, (50.0, 16.0, 3.0),
        0.0, torch.ones(2, dtype=torch.float64), None, torch.zeros_like(display[:, :1]),
    )  # fmt: skip
    w = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = torch.arange(2)
    shown = handle.from_display(display * plain.mask(w))  # the hidden image is black
    ce = torch.nn.functional.cross_entropy(handle.model(shown), TARGETS, reduction="none")
    ceiling = torch.stack([ce[0] - 0.5, ce[1] + 0.5])  # row 0 above its ceiling, row 1 below
    capped = replace(plain, ceiling=ceiling)
    difference = capped.loss(w, rows, 0) - plain.loss(w, rows, 0)
    capped_term = torch.tensor([0.5, 0.0], dtype=torch.float64)  # max(0, CE − ceiling)
    expected = 50.0 * (capped_term - ce)
    torch.testing.assert_close(difference, expected.detach(), atol=1e-9, rtol=0)

    neuromask_same_alone_or_in_a_group(handle, inputs, iterations=30, cap_prediction=True)


def test_neuromask_does_not_cap_the_prediction_term_where_the_fill_alone_holds_it() -> None:
    """On the brightness model the blurred fill keeps each square's brightness, so the image
    adds almost nothing to its fill's probability: a capped term would be zero from the first
    step and the sparsity term would erase the mask. There the term stays the plain CE."""
    handle, inputs = region_handle("brightness", torch.float64), square_inputs(2, seed=4)
    inputs = inputs.to(torch.float64)
    hidden = blur_fill(handle.to_display(inputs))
    logits = handle.model(inputs)
    _, evident = prediction_floors(handle, hidden, logits, TARGETS, 0.25, 2)
    assert not evident.any(), f"the fill alone must hold it (evidence < {MIN_EVIDENCE})"
    capped = explain("neuromask", handle, inputs, TARGETS, iterations=60, cap_prediction=True)
    plain = explain("neuromask", handle, inputs, TARGETS, iterations=60, cap_prediction=False)
    torch.testing.assert_close(capped.saliency, plain.saliency, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["meaningful_perturbation", "extremal_perturbation"])
def test_a_group_matches_alone_in_float32_too(name: str) -> None:
    handle, inputs = region_handle("brightness"), square_inputs(2, seed=2)
    together = explain(name, handle, inputs, TARGETS, iterations=40).saliency
    alone = torch.cat(
        [explain(name, handle, inputs[i : i + 1], TARGETS[i : i + 1], iterations=40).saliency
         for i in range(2)]
    )  # fmt: skip
    torch.testing.assert_close(together, alone, atol=1e-3, rtol=0)


def test_extremal_areas_of_a_group_are_rows_of_one_batch() -> None:
    """Two areas together equal each area alone."""
    handle, inputs = region_handle("brightness", torch.float64), square_inputs(1, 3, torch.float64)
    both = explain("extremal_perturbation", handle, inputs, TARGETS[:1], areas=(0.1, 0.3),
                   iterations=30)  # fmt: skip
    parts = [
        explain("extremal_perturbation", handle, inputs, TARGETS[:1], areas=(a,), iterations=30)
        for a in (0.1, 0.3)
    ]
    torch.testing.assert_close(both.saliency, parts[0].saliency + parts[1].saliency)
    assert (
        both.meta[0]["mask_areas"]
        == parts[0].meta[0]["mask_areas"] + parts[1].meta[0]["mask_areas"]
    )


@pytest.mark.parametrize("name", ["meaningful_perturbation", "neuromask"])
def test_seeded_methods_repeat_with_a_seed_and_vary_across_seeds(name: str) -> None:
    handle, inputs = region_handle("brightness"), square_inputs(1)
    kw: dict[str, Any] = {"iterations": 20}
    if name == "meaningful_perturbation":
        kw["init"] = "random"
    first = explain(name, handle, inputs, TARGETS[:1], seed=3, **kw).saliency
    again = explain(name, handle, inputs, TARGETS[:1], seed=3, **kw).saliency
    other = explain(name, handle, inputs, TARGETS[:1], seed=4, **kw).saliency
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)


def snapshot(model: torch.nn.Module) -> tuple[dict[str, Tensor], dict[str, bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, {k: p.requires_grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(FAST))
def test_the_model_is_never_updated_nor_its_flags_changed(name: str) -> None:
    handle = region_handle("energy")
    handle.model.high_pass.weight.requires_grad_(False)
    handle.model.register_parameter("spare", torch.nn.Parameter(torch.ones(2)))  # trainable
    inputs = square_inputs(2)
    state, flags = snapshot(handle.model)
    explain(name, handle, inputs, TARGETS, iterations=12)

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        explain(name, handle, inputs, TARGETS, iterations=12, progress=cancel)
    after_state, after_flags = snapshot(handle.model)
    assert after_flags == flags == {"high_pass.weight": False, "spare": True}
    assert all(torch.equal(after_state[k], v) for k, v in state.items())
    assert all(p.grad is None for p in handle.model.parameters())


@pytest.mark.parametrize("name", sorted(FAST))
def test_runs_from_inside_inference_mode_and_reports_progress(name: str) -> None:
    handle = region_handle("brightness")
    seen: list[tuple[int, int]] = []
    with torch.inference_mode():
        inputs = square_inputs(3)  # inference tensors, as the worker makes them
        result = explain(
            name, handle, inputs, torch.tensor([0, 1, 0]), iterations=25, max_batch_size=2,
            progress=lambda done, total: seen.append((done, total)),
        )  # fmt: skip
    assert torch.isfinite(result.saliency).all()
    rows = 3 * len(FAST[name].get("areas", (0,)))
    chunks = -(-rows // 2)
    assert seen[-1] == (25 * chunks, 25 * chunks)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    done = {d for d, _ in seen}  # every 10 iterations and at the end of each chunk
    assert {25 * c + t for c in range(chunks) for t in (10, 20, 25)} <= done


@pytest.mark.parametrize("name", sorted(FAST))
def test_early_stop_ends_masks_whose_loss_stopped_improving(name: str) -> None:
    handle, inputs = region_handle("brightness"), square_inputs(2)
    result = explain(
        name, handle, inputs, TARGETS, iterations=400, early_stop=True, patience=5, tolerance=0.5
    )
    ran = [meta["iterations"] for meta in result.meta]
    flat = [n for row in ran for n in (row if isinstance(row, list) else [row])]
    assert all(n < 400 for n in flat), ran


def test_parameter_defaults_are_the_papers() -> None:
    mp = MeaningfulPerturbationParams()
    assert (mp.iterations, mp.learning_rate, mp.l1_lambda, mp.tv_lambda, mp.tv_beta) == (
        300, 0.1, 1e-2, 1e-2, 3.0,
    )  # fmt: skip  # λ1: 1e-2, not the code's 1e-4 (issue 14, the module docstring)
    assert mp.init == "circle"
    # pixel sizes: the code's at 224 px, scaled with the input; a client's value wins
    sizes = (mp.mask_scale, mp.mask_blur, mp.blur_sigma, mp.jitter)
    assert mp_geometry(224, *sizes) == (8, 5.0, 10.0, 4)
    assert mp_geometry(112, *sizes) == (4, 2.5, 5.0, 2)
    assert mp_geometry(112, 8, None, 10.0, None) == (8, 2.5, 10.0, 2)
    ep = ExtremalPerturbationParams()
    assert (ep.iterations, ep.areas, ep.levels) == (800, (0.1,), 8)
    # pixel sizes: TorchRay's at 224 px, scaled with the input; a client's value wins
    assert geometry(224, ep.step, ep.sigma, ep.max_blur) == (7, 21.0, 20.0)
    assert geometry(112, ep.step, ep.sigma, ep.max_blur) == (4, 10.5, 10.0)
    assert geometry(448, 5, None, 3.0) == (5, 42.0, 3.0)
    assert all(scaled_step(side) == geometry(side, None, None, None)[0] for side in range(8, 600))
    assert (ep.learning_rate, ep.momentum, ep.area_growth, ep.smooth) == (0.01, 0.9, 1.0035, 0.09)
    assert ep.area_lambda == 100.0  # TorchRay's 300 overrides small logits (module docstring)
    nm = NeuroMaskParams()
    assert (nm.iterations, nm.learning_rate, nm.temperature, nm.weight_limit) == (
        1000, 0.03, 0.3, 10.0,
    )  # fmt: skip
    assert (nm.lambda_pred, nm.lambda_sparse, nm.lambda_smooth, nm.laplacian, nm.rms_init) == (
        50.0, 16.0, 3.0, 5, 1.0,
    )  # fmt: skip
    # the deviations from the authors' code (fill black, init 10, no mask blur), with reasons
    assert (nm.fill, nm.init_limit, nm.mask_sigma) == ("blur", 1.0, 4.0)
    assert (nm.sparsity_growth, nm.keep_prediction, nm.jitter) == (25.0, 0.25, 0)
    assert nm.cap_prediction  # the paper's plain cross-entropy rewards adversarial masks
    assert not (mp.early_stop or ep.early_stop or nm.early_stop)


def test_parameter_models_refuse_what_cannot_work() -> None:
    from pydantic import ValidationError

    from app.contract.jobs import ModelInfo

    for bad in ({"areas": []}, {"areas": [0.0]}, {"areas": [1.0]}, {"variant": "dual"}):
        with pytest.raises(ValidationError):
            ExtremalPerturbationParams.model_validate(bad)
    with pytest.raises(ValidationError):
        MeaningfulPerturbationParams.model_validate({"iterations": 0})
    info = ModelInfo(
        name="m", input_size=(8, 8), num_classes=2, labels=["a", "b"], mean=[0.5] * 3,
        std=[0.25] * 3, default_layer=None, layers=[],
    )  # fmt: skip
    with pytest.raises(ValueError, match="mask_scale"):
        MeaningfulPerturbationParams(mask_scale=16).check_model(info)
    with pytest.raises(ValueError, match="step"):
        ExtremalPerturbationParams(step=9).check_model(info)
    ExtremalPerturbationParams(step=8).check_model(info)
