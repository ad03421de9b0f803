"""The pieces of the FMO reconstruction (METHODS §1.3–1.4): cell grids and their windows, the
selection rule between levels, and the combination of the level maps.

* :class:`Grid`: one level — ``g`` cells along the shorter side (the longer side gets
  ``round(g · long / short)``), cell edges at ``round(k · H / g)``; windows of ``window × window``
  cells at a stride of one cell. With ``border=True`` (HiPe's variant) the top-left cell runs
  from ``−(window − 1)`` to ``g − 1`` and border windows are clipped, so every cell is covered
  by ``window²`` windows: ``(g + window − 1)²`` windows; without it, ``(g − window + 1)²``.
* :func:`plan_grids`: the levels for an input size, dropping levels whose cells are under
  ``min_cell`` px (METHODS §1.3: "for small inputs drop the levels whose cell would be
  < ~4 px").
* :func:`select_windows`: which windows of the next level to probe, from the current map.
* :class:`Merge`: ``refine`` (default: finer evidence replaces coarser where probed, output the
  mean over levels), ``sum`` (HiPe's accumulation), ``finest`` (the last refined level only)
  or ``depth`` (hierarchical ranking, our addition).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers.base import ExplainerError
from workers.explainers.postprocess import normalise


@dataclass(frozen=True)
class Grid:
    """One level of FMO: cell edges per axis and the window size in cells."""

    edges_y: tuple[int, ...]
    edges_x: tuple[int, ...]
    window: int
    border: bool

    @property
    def cells(self) -> tuple[int, int]:
        """Cells per axis ``(g_y, g_x)``."""
        return len(self.edges_y) - 1, len(self.edges_x) - 1

    @property
    def cell_px(self) -> float:
        """Size of a cell along the shorter side, in pixels."""
        return min(self.edges_y[-1] / self.cells[0], self.edges_x[-1] / self.cells[1])

    def origins(self, cells: int) -> range:
        """Top-left cell indices of the windows along an axis of ``cells`` cells."""
        if self.border:
            return range(-(self.window - 1), cells)
        return range(0, cells - self.window + 1)

    @property
    def shape(self) -> tuple[int, int]:
        """Windows per axis."""
        return len(self.origins(self.cells[0])), len(self.origins(self.cells[1]))

    def boxes(self, device: torch.device) -> Tensor:
        """``(N, 4)`` pixel boxes ``(y0, y1, x0, x1)`` of the windows, row-major, clipped."""
        per_axis = []
        for edges in (self.edges_y, self.edges_x):
            cells = len(edges) - 1
            table = torch.tensor(edges, device=device)
            start = torch.tensor(list(self.origins(cells)), device=device)
            low = table[start.clamp(min=0)]
            high = table[(start + self.window).clamp(max=cells)]
            per_axis.append((low, high))
        (y0, y1), (x0, x1) = per_axis
        ny, nx = y0.numel(), x0.numel()
        return torch.stack(
            [y0.repeat_interleave(nx), y1.repeat_interleave(nx), x0.repeat(ny), x1.repeat(ny)],
            dim=1,
        )

    def window_stats(self, maps: Tensor, stat: str) -> Tensor:
        """``(B, N)`` max (``stat="max"``) or mean (``"mean"``) of ``maps`` over each window."""
        batch = maps.shape[0]
        gy, gx = self.cells
        cell_y = _cell_index(self.edges_y, maps.device)
        cell_x = _cell_index(self.edges_x, maps.device)
        cell_of = (cell_y[:, None] * gx + cell_x[None, :]).flatten().expand(batch, -1)
        flat = maps.flatten(1).float()
        pad = (self.window - 1) if self.border else 0
        if stat == "max":
            per_cell = flat.new_full((batch, gy * gx), -math.inf)
            per_cell.scatter_reduce_(1, cell_of, flat, reduce="amax", include_self=True)
            grid = F.pad(per_cell.view(batch, 1, gy, gx), (pad,) * 4, value=-math.inf)
            pooled = F.max_pool2d(grid, self.window, stride=1)
        elif stat == "mean":
            sums = flat.new_zeros(batch, gy * gx).scatter_add_(1, cell_of, flat)
            counts = flat.new_zeros(batch, gy * gx).scatter_add_(1, cell_of, torch.ones_like(flat))
            ones = flat.new_ones(1, 1, self.window, self.window)
            total = F.conv2d(F.pad(sums.view(batch, 1, gy, gx), (pad,) * 4), ones)
            area = F.conv2d(F.pad(counts.view(batch, 1, gy, gx), (pad,) * 4), ones)
            pooled = total / area.clamp(min=1)
        else:
            raise ExplainerError(f"unknown select_stat {stat!r}; use max or mean")
        return pooled.flatten(1)


def _cell_index(edges: tuple[int, ...], device: torch.device) -> Tensor:
    """Cell of every pixel along an axis with the given cell edges."""
    inner = torch.tensor(edges[1:-1], device=device, dtype=torch.long)
    return torch.bucketize(torch.arange(edges[-1], device=device), inner, right=True)


def _edges(length: int, cells: int) -> tuple[int, ...]:
    return tuple(round(k * length / cells) for k in range(cells + 1))


def plan_grids(
    size: tuple[int, int],
    grids: list[int] | tuple[int, ...] | None,
    levels: int,
    min_cell: int,
    window: int,
    border: bool,
) -> list[Grid]:
    """The levels for an input of ``size``: ``grids`` (cells along the shorter side) or
    ``4 · 2^l`` for ``l < levels``; levels with cells under ``min_cell`` px are dropped."""
    counts = list(grids) if grids else [4 * 2**level for level in range(levels)]
    if any(b <= a for a, b in itertools.pairwise(counts)):
        raise ExplainerError(f"grids must increase from coarse to fine, got {counts}")
    short, long_ = min(size), max(size)
    plan = []
    for cells in counts:
        if short / cells < min_cell or cells < window:
            continue
        other = max(window, round(cells * long_ / short))
        gy, gx = (cells, other) if size[0] <= size[1] else (other, cells)
        plan.append(Grid(_edges(size[0], gy), _edges(size[1], gx), window, border))
    if not plan:
        raise ExplainerError(
            f"no FMO level fits an input of {size} px with cells of at least {min_cell} px "
            f"and windows of {window} cells (grids {counts})"
        )
    return plan


def select_windows(
    current: Tensor, grid: Grid, select: str, select_stat: str, topk: float
) -> Tensor:
    """``(B, N)`` bool: the windows of ``grid`` to probe, given the current map ``(B, H, W)``.

    ``midrange``: statistic ≥ min + (max − min)/2 of the map; ``mean``: ≥ the map's mean;
    ``topk``: the ``⌈topk · N⌉`` windows with the largest statistic; ``all``: every window.
    A flat map (max = min: nothing mattered at the coarser levels) selects nothing, except
    with ``all``.
    """
    count = grid.shape[0] * grid.shape[1]
    batch = current.shape[0]
    if select == "all":
        return torch.ones(batch, count, dtype=torch.bool, device=current.device)
    flat = current.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    informative = (high > low)[:, None]
    stats = grid.window_stats(current, select_stat)
    if select == "midrange":
        keep = stats >= (low + (high - low) / 2)[:, None]
    elif select == "mean":
        keep = stats >= flat.mean(dim=1)[:, None]
    elif select == "topk":
        order = torch.argsort(stats, dim=1, descending=True, stable=True)
        chosen = max(1, math.ceil(topk * count))
        keep = torch.zeros_like(stats, dtype=torch.bool).scatter_(1, order[:, :chosen], True)
    else:
        raise ExplainerError(f"unknown select {select!r}; use midrange, mean, topk or all")
    return keep & informative


COMBINES = ("refine", "sum", "finest", "depth")


class Merge:
    """Combines the level maps as they arrive (METHODS §1.4 step 6).

    ``refine``: ``S_0 = H_0``, ``S_l = H_l`` where probed else ``S_{l−1}``, output the mean of
    the ``S_l``; ``sum``: every level's ``Σ_w Δ_w M_w`` added (HiPe); ``finest``: the last
    ``S_l``; ``depth`` (ours, not in METHODS): hierarchical ranking — the number of levels
    that probed a pixel plus its last ``S_l`` scaled into [0, 1), so pixels the search
    followed deeper always rank above the ones it left behind. ``depth`` selects like
    ``refine``; only the output differs.
    """

    def __init__(self, combine: str) -> None:
        if combine not in COMBINES:
            raise ExplainerError(f"unknown combine {combine!r}; use one of {', '.join(COMBINES)}")
        self.combine = combine
        self.seen = 0
        self.refined: Tensor | None = None  # S_l
        self.refined_total: Tensor | None = None  # Σ_{k ≤ l} S_k
        self.summed: Tensor | None = None  # Σ_l Σ_w Δ_w M_w
        self.depth: Tensor | None = None  # levels that probed each pixel

    def add(self, average: Tensor, covered: Tensor, painted: Tensor) -> None:
        """One level: ``average`` = H_l, ``covered`` = Cov_l, ``painted`` = Σ_w Δ_w M_w.

        A level where nothing was probed still counts (``covered`` all False): its refined
        map is the previous one, so ``refine`` averages over every planned level.
        """
        if self.refined is None or self.refined_total is None or self.summed is None:
            self.refined, self.refined_total, self.summed = average, average.clone(), painted
            self.depth = covered.float()
        else:
            self.refined = torch.where(covered, average, self.refined)
            self.refined_total = self.refined_total + self.refined
            self.summed = self.summed + painted
            self.depth = self.depth + covered.float()
        self.seen += 1

    def current(self) -> Tensor:
        """The merged map of the levels so far, as selection sees it."""
        if self.refined is None or self.refined_total is None or self.summed is None:
            raise RuntimeError("no level merged yet")
        if self.combine == "sum":
            return self.summed
        if self.combine == "finest":
            return self.refined
        return self.refined_total / self.seen

    def result(self) -> Tensor:
        """The output map."""
        if self.combine != "depth":
            return self.current()
        assert self.refined is not None and self.depth is not None
        return self.depth + 0.999 * normalise(self.refined)
