"""``xplain-keys``: add, revoke and list the API keys of a keys file.

    xplain-keys add webshop --rate-per-minute 60 --max-active-jobs 10   # prints the new key once
    xplain-keys revoke webshop
    xplain-keys list

The file is ``--file`` or ``XPLAIN_KEYS_FILE``. Only the key's SHA-256 is written; the key itself
is printed once and cannot be recovered. Gateways pick the change up within a second (they
re-read the file when it changes). The file is replaced atomically (write, then rename).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from app.identity import KeysFileError, key_digest, parse_keys

KEY_PREFIX = "xpl_"


def new_key() -> str:
    """A fresh random key: ``xpl_`` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render(entries: list[dict[str, Any]]) -> str:
    """The TOML text of a keys file."""
    blocks = ["# API keys of the xplain gateway (managed by xplain-keys); SHA-256 only.\n"]
    for entry in entries:
        lines = ["[[keys]]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def load(path: Path) -> list[dict[str, Any]]:
    """The raw entries of ``path`` (none if it does not exist), validated."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    parse_keys(text, str(path))
    entries = tomllib.loads(text).get("keys", [])
    return [dict(entry) for entry in entries]


def save(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write ``entries`` to ``path`` atomically, readable by its owner only."""
    text = render(entries)
    parse_keys(text, str(path))  # never write a file the gateway would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".keys-")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``xplain-keys``."""
    parser = argparse.ArgumentParser(prog="xplain-keys", description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=os.environ.get("XPLAIN_KEYS_FILE"))
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a key and print it once")
    add.add_argument("name")
    add.add_argument("--rate-per-minute", type=int)
    add.add_argument("--max-active-jobs", type=int)
    add.add_argument("--max-job-cost", type=float, help="seconds of estimated compute")
    add.add_argument("--models", help="comma-separated model names it may use")
    add.add_argument("--webhook-secret", help="secret that signs this client's webhooks")
    revoke = commands.add_parser("revoke", help="remove a key")
    revoke.add_argument("name")
    commands.add_parser("list", help="names and limits (never keys)")
    args = parser.parse_args(argv)
    if not args.file:
        parser.error("name the keys file with --file or XPLAIN_KEYS_FILE")
    path = Path(args.file)
    try:
        entries = load(path)
        if args.command == "list":
            for entry in entries:
                limits = {
                    k: v for k, v in entry.items() if k not in ("name", "sha256", "webhook_secret")
                }
                print(entry["name"], " ".join(f"{k}={v}" for k, v in limits.items()))
            return 0
        if args.command == "revoke":
            kept = [e for e in entries if e["name"] != args.name]
            if len(kept) == len(entries):
                print(f"no key named {args.name!r} in {path}", file=sys.stderr)
                return 1
            save(path, kept)
            print(f"revoked {args.name!r}")
            return 0
        if any(e["name"] == args.name for e in entries):
            print(f"a key named {args.name!r} exists; revoke it first", file=sys.stderr)
            return 1
        key = new_key()
        entry: dict[str, Any] = {"name": args.name, "sha256": key_digest(key)}
        for option in ("rate_per_minute", "max_active_jobs", "max_job_cost", "webhook_secret"):
            if getattr(args, option) is not None:
                entry[option] = getattr(args, option)
        if args.models:
            entry["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
        save(path, [*entries, entry])
    except (OSError, KeysFileError, tomllib.TOMLDecodeError) as error:
        print(f"xplain-keys: {error}", file=sys.stderr)
        return 2
    print(key)
    print(f"added {args.name!r} to {path}; the key above is shown only now", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
