"""The one place that slices work into forward-pass chunks."""

from __future__ import annotations

from collections.abc import Iterator


def iter_chunks(total: int, max_batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(total)`` of at most ``max_batch_size`` items."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    for start in range(0, total, max_batch_size):
        yield slice(start, min(start + max_batch_size, total))
