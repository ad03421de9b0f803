"""Small header parsers: ``Accept`` (JSON or PNG) and ``Prefer`` (RFC 7240 wait / async)."""

from __future__ import annotations

import math

_PNG_TYPES = ("image/png", "image/*")
_JSON_TYPES = ("application/json", "application/*", "*/*")


def _accept_ranks(accept: str) -> dict[str, tuple[float, int]]:
    ranks: dict[str, tuple[float, int]] = {}
    for position, part in enumerate(accept.split(",")):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media:
            ranks.setdefault(media.lower(), (quality, -position))
    return ranks


def prefers_png(accept: str | None) -> bool:
    """Whether ``Accept`` asks for ``image/png`` (or ``image/*``) above JSON.

    Ties go to the type listed first; a client that lists no image type gets JSON.
    """
    if not accept:
        return False
    ranks = _accept_ranks(accept)
    png = max((ranks[t] for t in _PNG_TYPES if t in ranks), default=None)
    if png is None or png[0] <= 0:
        return False
    json_rank = max((ranks[t] for t in _JSON_TYPES if t in ranks), default=None)
    return json_rank is None or png > json_rank


def requested_wait(
    wait: float | None, prefer: str | None, *, default_s: float, max_s: float
) -> float:
    """Seconds to wait: the ``wait`` field, else ``Prefer: respond-async`` (0) or
    ``Prefer: wait=N``, else the default; capped at ``max_s``."""
    if wait is None and prefer:
        for token in prefer.split(","):
            name, _, value = token.strip().partition("=")
            name = name.strip().lower()
            if name == "respond-async":
                wait = 0.0
            elif name == "wait" and wait is None:
                try:
                    wait = float(value.strip().strip('"'))
                except ValueError:
                    continue
    if wait is None or not math.isfinite(wait) or wait < 0:
        wait = default_s
    return min(wait, max_s)
