"""``xplain``: explain an image from the shell.

    xplain explain IMAGE --method gradcam [--model M] [--target T] [--param k=v ...]
                         [--out heat.png] [--overlay] [--json]
    xplain methods | xplain models | xplain job ID

Exit codes: 0 success; 1 the job failed or was cancelled; 2 bad command line; 3 the service
refused the request (4xx); 4 the service is unreachable or unavailable (5xx, connection).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from xplain_cli.client import ApiError, Client
from xplain_cli.output import print_job, print_methods, print_models, wait_with_progress

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def parse_param(text: str) -> tuple[str, Any]:
    """``k=v`` with ``v`` read as JSON when it parses (numbers, lists, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(prog="xplain", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("XPLAIN_URL", "http://127.0.0.1:8000"),
        help="service URL (env XPLAIN_URL; default http://127.0.0.1:8000)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser("explain", help="explain one image")
    explain.add_argument("image", type=Path)
    explain.add_argument("--method", default="gradcam")
    explain.add_argument("--model")
    explain.add_argument("--target", help="class index or label (default: the top-1 class)")
    explain.add_argument("--param", action="append", type=parse_param, default=[], metavar="K=V")
    explain.add_argument("--evaluate", action="append", default=[], metavar="METRIC")
    explain.add_argument("--out", type=Path, help="where to save the heatmap PNG")
    explain.add_argument("--overlay", action="store_true", help="save the heatmap over the image")
    explain.add_argument("--json", action="store_true", help="print the result as JSON")
    explain.add_argument("--timeout", type=float, default=600.0, help="seconds to wait at most")
    commands.add_parser("methods", help="list the methods and their parameters")
    commands.add_parser("models", help="list the models the workers serve")
    job = commands.add_parser("job", help="show one job")
    job.add_argument("job_id")
    job.add_argument("--json", action="store_true")
    return parser


def run_explain(client: Client, args: argparse.Namespace) -> int:
    """Submit, wait with a progress bar, save the heatmap, print the result."""
    if not args.image.is_file():
        print(f"xplain: error: no such image file: {args.image}", file=sys.stderr)
        return EXIT_USAGE
    status, body = client.submit(
        args.image,
        method=args.method,
        model=args.model,
        target=args.target,
        params=dict(args.param),
        evaluate=args.evaluate,
        wait=2.0,
    )
    job_id = body["job_id"]
    if status == 202:
        wait_with_progress(client, job_id, args.timeout, quiet=args.json)
    job = client.get_json(f"/v1/jobs/{job_id}")
    if job["status"] != "succeeded":
        error = (job.get("error") or {}).get("detail", "")
        print(
            f"xplain: job {job_id} {job['status']}{': ' + error if error else ''}", file=sys.stderr
        )
        return EXIT_JOB_FAILED
    out = args.out or args.image.with_name(f"{args.image.stem}.{args.method}.png")
    style = "overlay" if args.overlay else "heatmap"
    out.write_bytes(client.get_bytes(f"/v1/jobs/{job_id}/heatmap.png", style=style))
    if args.json:
        print(json.dumps(job | {"saved_to": str(out)}))
    else:
        print_job(job, saved_to=out)
    return EXIT_OK


def dispatch(client: Client, args: argparse.Namespace) -> int:
    """Run one sub-command."""
    if args.command == "explain":
        return run_explain(client, args)
    if args.command == "methods":
        print_methods(client.get_json("/v1/methods"))
    elif args.command == "models":
        print_models(client.get_json("/v1/models"))
    elif args.command == "job":
        job = client.get_json(f"/v1/jobs/{args.job_id}", heatmap_data="false")
        print(json.dumps(job)) if args.json else print_job(job)
        return EXIT_OK if job["status"] in ("succeeded", "queued", "running") else EXIT_JOB_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xplain`` command."""
    args = build_parser().parse_args(argv)
    client = Client(args.url, api_key=os.environ.get("XPLAIN_API_KEY"))
    try:
        return dispatch(client, args)
    except ApiError as error:
        print(f"xplain: error: {error.detail}", file=sys.stderr)
        if 400 <= error.status < 500:
            return EXIT_REFUSED
        return EXIT_UNAVAILABLE
    except TimeoutError as error:
        print(f"xplain: error: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except httpx.HTTPError as error:
        print(f"xplain: error: cannot reach {args.url}: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
