"""``python -m app``: serve the gateway with uvicorn, its HTTP parser bounded.

    python -m app --host 0.0.0.0 --port 8000 [--graceful-s 10] [--proxy-headers]

Uses uvicorn's h11 parser with ``h11_max_incomplete_event_size`` at ``XPLAIN_MAX_HEADER_BYTES``
(plus a little): request headers larger than that are refused while they are parsed, instead
of being buffered whole (the gateway's own middleware answers 431 above the same limit for a
server started another way).

SIGTERM drains: ``/readyz`` answers 503, the listening socket closes (a load balancer moves new
connections to other gateways), requests that wait for a job answer at once with 202 and the
job's URL, event streams end (clients reconnect elsewhere and resume), and the requests in
flight finish, up to ``--graceful-s`` seconds; then the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from types import FrameType

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
    from app.main import app, begin_drain

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, which also tells the app it is draining on the first signal."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                with contextlib.suppress(RuntimeError):  # no loop yet: nothing to drain
                    asyncio.get_running_loop().call_soon_threadsafe(begin_drain, app)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
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
    DrainingServer(config).run()


if __name__ == "__main__":
    main()
