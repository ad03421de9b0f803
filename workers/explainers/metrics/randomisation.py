"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018).

A map that explains the *model* must change when the model's learned weights are destroyed.
The check re-initialises the top layers of a copy of the model (cascading from the logits
downwards, as in the paper and in Quantus' ``ModelParameterRandomisation``: every module with
its own parameters and a ``reset_parameters`` method, BatchNorm statistics included), explains
the same inputs for the same targets with both models, and reports the Spearman rank
correlation of the two maps per image. Near 1: the map ignores what the model learned (an edge
detector would pass this off as an explanation); near 0 or below: the map depends on the
weights, as a faithful method's must.

Spearman = Pearson correlation of the ranks, ties given their average rank. A constant map
carries no ranking; its correlation with anything is reported as 0 (a map that collapses to a
constant on the randomised model did change). ``absolute=True`` compares ``|map|`` (the paper
reports both).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from workers.explainers.base import ModelHandle

MapFn = Callable[[ModelHandle, Tensor, Tensor], Tensor]
"""``(handle, inputs, targets) -> (B, H, W)`` maps: the method under test."""


def randomisable_layers(model: nn.Module) -> list[str]:
    """Dotted names of modules with their own parameters and ``reset_parameters``, in order."""
    return [
        name
        for name, module in model.named_modules()
        if name
        and callable(getattr(module, "reset_parameters", None))
        and any(True for _ in module.parameters(recurse=False))
    ]


def layers_from(model: nn.Module, name: str) -> list[str]:
    """The randomisable layers at or after module ``name`` (its own sub-modules included)."""
    layers = randomisable_layers(model)
    names = [n for n, _ in model.named_modules()]
    if name not in names:
        raise ValueError(f"model has no module {name!r}")
    first = names.index(name)
    return [layer for layer in layers if names.index(layer) >= first]


def randomise_layers(model: nn.Module, layers: Sequence[str], seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with ``layers`` re-initialised from ``seed`` (the original is
    untouched; the global random state is restored afterwards)."""
    clone = copy.deepcopy(model)
    cuda = sorted({p.device.index or 0 for p in clone.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for name in layers:
            clone.get_submodule(name).reset_parameters()  # type: ignore[operator]
    return clone


def randomise_top_layers(model: nn.Module, count: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with its last ``count`` randomisable layers re-initialised."""
    if count < 1:
        raise ValueError("count must be at least 1")
    return randomise_layers(model, randomisable_layers(model)[-count:], seed)


def average_ranks(values: Tensor) -> Tensor:
    """``(B, N)`` -> ranks 0..N−1 along each row, tied values sharing their average rank."""
    ordered, order = values.sort(dim=1)
    batch, count = values.shape
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1
    position = torch.arange(count, device=values.device, dtype=torch.float64).expand(batch, -1)
    sums = torch.zeros(batch, count, dtype=torch.float64, device=values.device)
    sums.scatter_add_(1, group, position)
    sizes = torch.zeros_like(sums).scatter_add_(1, group, torch.ones_like(position))
    ranks_sorted = (sums / sizes.clamp(min=1)).gather(1, group)
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """``(B,)`` Spearman rank correlation of each row pair (maps flattened); constant -> 0."""
    ra = average_ranks(a.flatten(1).double())
    rb = average_ranks(b.flatten(1).double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    norm = ra.norm(dim=1) * rb.norm(dim=1)
    corr = (ra * rb).sum(dim=1) / norm.clamp(min=1e-300)
    return torch.where(norm > 0, corr, torch.zeros_like(corr)).float()


def randomised_handle(handle: ModelHandle, layers: Sequence[str], seed: int = 0) -> ModelHandle:
    """The same handle over a copy of its model with ``layers`` re-initialised."""
    return dataclasses.replace(handle, model=randomise_layers(handle.model, layers, seed))


def sanity_correlation(
    explain: MapFn,
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    layers: Sequence[str],
    *,
    seed: int = 0,
    absolute: bool = False,
    original: Tensor | None = None,
) -> Tensor:
    """``(B,)`` Spearman correlation between ``explain`` on the model and on the model with
    ``layers`` re-initialised (lower = the map depends more on the learned weights).

    ``original``: the maps on the trained model when already computed (saves one call).
    """
    first = explain(handle, inputs, targets) if original is None else original
    second = explain(randomised_handle(handle, layers, seed), inputs, targets)
    if absolute:
        first, second = first.abs(), second.abs()
    return spearman(first.detach().cpu(), second.detach().cpu())
