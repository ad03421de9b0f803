"""The contract between the method catalogue and the method library, for every method.

(a) every ``MethodSpec`` has an explainer and every explainer a spec; (b) an explainer's keyword
parameters are exactly its parameter model's fields plus ``progress``; (c) every fast-lane
method on a tiny CNN leaves the model as it found it — no hooks, same ``state_dict`` and
``requires_grad`` flags, no ``.grad`` on parameters — after success, after its progress callback
raises :class:`Cancelled`, and after a bad layer; and returns finite ``(B, H, W)`` float32 maps.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_module

from app.contract.methods import method_specs
from workers.explainers import (
    Cancelled,
    ExplainerError,
    ModelHandle,
    explainer_names,
    get_explainer,
)

SPECS = method_specs()
BOTH = sorted(set(SPECS) & set(explainer_names()))
FAST = sorted(name for name in BOTH if SPECS[name].lane == "fast")
SIZE = 32


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_cnn() -> nn.Module:
    """Conv/ReLU/MaxPool features, global average pooling, one linear layer; 4 classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def make_handle(frozen: bool) -> ModelHandle:
    model = tiny_cnn()
    if frozen:
        model.requires_grad_(False)
    return ModelHandle(
        name="tiny",
        model=model,
        input_size=(SIZE, SIZE),
        labels=("a", "b", "c", "d"),
        default_layer="4",
        architecture="tiny_cnn",
    )


def default_params(name: str) -> dict[str, Any]:
    """The method's validated defaults, as the worker passes them."""
    return SPECS[name].params().model_dump()


def hooks_on(model: nn.Module) -> list[str]:
    """Every module or parameter hook still registered on ``model``, by where it sits."""
    found = []
    for module_name, module in model.named_modules():
        for kind in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            if getattr(module, kind, None):
                found.append(f"{module_name or '<root>'}.{kind}")
    for parameter_name, parameter in model.named_parameters():
        if parameter._backward_hooks:
            found.append(f"{parameter_name}._backward_hooks")
    for kind in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        if getattr(module_module, kind, None):
            found.append(f"global {kind}")
    return found


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "flags": {k: p.requires_grad for k, p in model.named_parameters()},
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert hooks_on(model) == []
    assert after["flags"] == before["flags"]
    assert after["modules"] == before["modules"]
    assert after["training"] == before["training"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert all(p.grad is None for p in model.parameters())


def test_every_spec_has_an_explainer_and_every_explainer_a_spec() -> None:
    assert set(SPECS) - set(explainer_names()) == set(), "specs without an explainer"
    assert set(explainer_names()) - set(SPECS) == set(), "explainers without a spec"


@pytest.mark.parametrize("name", BOTH)
def test_keyword_parameters_are_the_params_fields_plus_progress(name: str) -> None:
    signature = inspect.signature(get_explainer(name))
    keyword_only = {
        p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    positional = [
        p.name
        for p in signature.parameters.values()
        if p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    assert positional == ["handle", "inputs", "targets"]
    assert keyword_only == set(SPECS[name].params.model_fields) | {"progress"}


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("name", FAST)
def test_fast_methods_leave_the_model_as_they_found_it(name: str, frozen: bool) -> None:
    handle = make_handle(frozen)
    model = handle.model
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3])
    explain, params = get_explainer(name), default_params(name)
    before = snapshot(model)

    result = explain(handle, inputs, targets, **params)
    assert result.saliency.shape == (2, SIZE, SIZE)
    assert result.saliency.dtype == torch.float32
    assert torch.isfinite(result.saliency).all()
    assert len(result.meta) == 2
    assert_unchanged(model, before)

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        explain(handle, inputs, targets, **{**params, "progress": cancel})
    assert_unchanged(model, before)

    if "layer" in params:
        with pytest.raises(ExplainerError):
            explain(handle, inputs, targets, **{**params, "layer": "no.such.layer"})
        assert_unchanged(model, before)
        with pytest.raises(ExplainerError):
            explain(handle, inputs, targets, **{**params, "layer": "7"})  # the Linear layer
        assert_unchanged(model, before)
