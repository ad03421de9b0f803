"""API keys as identities: who sends a request, and what that client may do.

A keys file (``XPLAIN_KEYS_FILE``, TOML) lists the clients::

    [[keys]]
    name = "webshop"                      # shown in logs, metrics and job records
    sha256 = "9f86d081884c7d65..."        # hex SHA-256 of the key: never the key itself
    rate_per_minute = 60                  # optional: jobs submitted per minute
    max_active_jobs = 10                  # optional: queued + running jobs at once
    max_job_cost = 30.0                   # optional: estimated seconds of one job
    models = ["resnet50"]                 # optional: the only models it may use
    webhook_secret = "..."                # optional: signs its webhooks (else the global one)

The file is re-read when its modification time or size changes (checked at most once a
second), so keys are added and revoked without a restart (``xplain-keys``). ``XPLAIN_API_KEY``
is the single-key shorthand (identity ``default``); with neither, the service is open and
every request is the identity ``anonymous``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("xplain.gateway.identity")

ANONYMOUS = "anonymous"
DEFAULT = "default"
RELOAD_CHECK_S = 1.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
FIELDS = frozenset(
    {"name", "sha256", "rate_per_minute", "max_active_jobs", "max_job_cost", "models",
     "webhook_secret"}
)  # fmt: skip


class KeysFileError(ValueError):
    """A keys file that cannot be used (the previous keys stay in force)."""


@dataclass(frozen=True)
class Identity:
    """A client: its name and limits (None: no limit of that kind)."""

    name: str
    rate_per_minute: int | None = None
    max_active_jobs: int | None = None
    max_job_cost: float | None = None
    models: frozenset[str] | None = None
    webhook_secret: str | None = None
    open: bool = False
    """No key is configured: every client is this one identity and sees every job."""

    def may_use(self, model: str) -> bool:
        """Whether this client may use ``model``."""
        return self.models is None or model in self.models


def key_digest(key: str) -> str:
    """Hex SHA-256 of a key, as the keys file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_keys(text: str, source: str = "keys file") -> dict[str, Identity]:
    """``sha256 -> Identity`` from the TOML text of a keys file; ``KeysFileError`` if invalid."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise KeysFileError(f"{source}: not valid TOML: {error}") from error
    entries = data.get("keys", [])
    if not isinstance(entries, list):
        raise KeysFileError(f"{source}: `keys` must be an array of tables ([[keys]])")
    out: dict[str, Identity] = {}
    names: set[str] = set()
    for index, raw in enumerate(entries):
        identity, digest = _entry(raw, f"{source}, entry {index + 1}")
        if identity.name in names or digest in out:
            raise KeysFileError(f"{source}: name {identity.name!r} or its key appears twice")
        names.add(identity.name)
        out[digest] = identity
    return out


def _entry(raw: Any, where: str) -> tuple[Identity, str]:
    if not isinstance(raw, dict):
        raise KeysFileError(f"{where}: not a table")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise KeysFileError(f"{where}: unknown field(s) {unknown}; known: {sorted(FIELDS)}")
    name, digest = raw.get("name"), str(raw.get("sha256", "")).lower()
    if not isinstance(name, str) or not _NAME.match(name) or name in (ANONYMOUS, DEFAULT):
        raise KeysFileError(f"{where}: `name` must be 1-64 letters, digits, . _ - (not reserved)")
    if not _HEX.match(digest):
        raise KeysFileError(f"{where}: `sha256` must be the 64 hex digits of the key's SHA-256")
    models = raw.get("models")
    if models is not None and not (
        isinstance(models, list) and all(isinstance(m, str) for m in models)
    ):
        raise KeysFileError(f"{where}: `models` must be a list of model names")
    secret = raw.get("webhook_secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        raise KeysFileError(f"{where}: `webhook_secret` must be a string of 16+ characters")
    identity = Identity(
        name=name,
        rate_per_minute=_positive(raw, "rate_per_minute", int, where),
        max_active_jobs=_positive(raw, "max_active_jobs", int, where),
        max_job_cost=_positive(raw, "max_job_cost", float, where),
        models=frozenset(models) if models is not None else None,
        webhook_secret=secret,
    )
    return identity, digest


def _positive(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise KeysFileError(f"{where}: `{key}` must be a positive number")
    if kind is int and not float(value).is_integer():
        raise KeysFileError(f"{where}: `{key}` must be a whole number")
    return kind(value)


@dataclass
class KeyRing:
    """The configured keys; :meth:`identify` maps a presented key to its identity."""

    path: Path | None = None
    single_key: str | None = None
    webhook_secret: str | None = None
    _keys: dict[str, Identity] = field(default_factory=dict)
    _stamp: tuple[float, int] | None = None
    _checked: float = float("-inf")

    def __post_init__(self) -> None:
        if self.path is not None:
            self._keys = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
            self._stamp = self._file_stamp()

    @property
    def open(self) -> bool:
        """No key configured: every request is anonymous and allowed."""
        return self.path is None and not self.single_key

    def identify(self, presented: str | None) -> Identity | None:
        """The identity of ``presented`` (None: missing or unknown key; open: anonymous)."""
        if self.open:
            return Identity(ANONYMOUS, webhook_secret=self.webhook_secret, open=True)
        if presented is None:
            return None
        if self.single_key and hmac.compare_digest(presented.encode(), self.single_key.encode()):
            return Identity(DEFAULT, webhook_secret=self.webhook_secret)
        self._reload_if_changed()
        identity = self._keys.get(key_digest(presented))
        if identity is not None and identity.webhook_secret is None and self.webhook_secret:
            identity = Identity(**{**identity.__dict__, "webhook_secret": self.webhook_secret})
        return identity

    def secret_for(self, name: str) -> str | None:
        """The webhook secret of the identity called ``name`` (its own, else the global)."""
        self._reload_if_changed()
        for identity in self._keys.values():
            if identity.name == name and identity.webhook_secret:
                return identity.webhook_secret
        return self.webhook_secret

    def _file_stamp(self) -> tuple[float, int] | None:
        assert self.path is not None
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return (status.st_mtime, status.st_size)

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            self._keys = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, KeysFileError) as error:
            log.error(
                "event=keys_file_invalid path=%s error=%s (previous keys kept)", self.path, error
            )
        else:
            log.info("event=keys_reloaded path=%s keys=%d", self.path, len(self._keys))
        self._stamp = stamp
