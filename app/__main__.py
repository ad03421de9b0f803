"""``python -m app``: serve the gateway with uvicorn, its HTTP parser bounded.

    python -m app --host 0.0.0.0 --port 8000 [--graceful-s 10] [--proxy-headers]

Uses uvicorn's h11 parser with ``h11_max_incomplete_event_size`` at ``XPLAIN_MAX_HEADER_BYTES``
(plus a little): request headers larger than that are refused while they are parsed, instead
of being buffered whole (the gateway's own middleware answers 431 above the same limit for a
server started another way). SIGTERM drains: the gateway stops accepting connections and
finishes the requests it holds, up to ``--graceful-s`` seconds.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from app.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the server."""
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--graceful-s", type=float, default=10.0)
    parser.add_argument("--proxy-headers", action="store_true")
    parser.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes + 4096,
        timeout_graceful_shutdown=int(args.graceful_s),
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        server_header=False,
        access_log=False,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
