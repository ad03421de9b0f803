"""What the command line prints: tables, a job summary and a progress bar (rich)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from xplain_cli.client import Client

FINAL = ("succeeded", "failed", "cancelled")


def wait_with_progress(client: Client, job_id: str, timeout: float, *, quiet: bool) -> None:
    """Follow the job's events with a progress bar until it ends (polling if events fail)."""
    console = Console(stderr=True, quiet=quiet)
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
    )
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"job {job_id[:8]}", total=1.0)
        try:
            for event in client.events(job_id):
                bar.update(task, completed=float(event.get("progress", 0.0)))
                if event.get("status") in FINAL:
                    return
                if time.monotonic() > deadline:
                    break
        except (httpx.HTTPError, ValueError):  # the stream is a convenience; polling decides
            pass
        while time.monotonic() < deadline:
            job = client.get_json(f"/v1/jobs/{job_id}", heatmap_data="false")
            bar.update(task, completed=float(job.get("progress", 0.0)))
            if job["status"] in FINAL:
                return
            time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")


def print_job(job: dict[str, Any], saved_to: Path | None = None) -> None:
    """A few lines about a job: status, target, top predictions, timings."""
    console = Console()
    console.print(
        f"job {job['job_id']}: [bold]{job['status']}[/bold] ({job['method']} on {job['model']})"
    )
    target = job.get("target")
    if target:
        console.print(
            f"target: {target['label']} (class {target['index']}, p={target['score']:.3f})"
        )
    for rank, pred in enumerate(job.get("predictions") or [], start=1):
        console.print(f"  {rank}. {pred['label']:<24} {pred['score']:.3f}")
    timings = job.get("timings") or {}
    if timings.get("total_ms") is not None:
        console.print(
            f"time: {timings.get('total_ms', 0):.0f} ms total, "
            f"{timings.get('compute_ms') or 0:.0f} ms compute"
        )
    for name, value in (job.get("evaluation") or {}).items():
        console.print(f"{name}: {value:.4f}")
    if saved_to is not None:
        console.print(f"heatmap saved to {saved_to}")


def print_methods(methods: Any) -> None:
    """The methods and their main parameters."""
    items = methods.get("methods", methods) if isinstance(methods, dict) else methods
    table = Table("method", "lane", "parameters (defaults)", "paper")
    for method in items:
        schema = method.get("params_schema") or method.get("schema") or {}
        defaults = method.get("defaults") or {
            name: prop.get("default") for name, prop in schema.get("properties", {}).items()
        }
        params = ", ".join(f"{k}={v}" for k, v in defaults.items())
        table.add_row(method["name"], method.get("lane", ""), params, method.get("paper", ""))
    Console().print(table)


def print_models(models: Any) -> None:
    """The served models."""
    items = models.get("models", models) if isinstance(models, dict) else models
    table = Table("model", "input", "classes", "default layer")
    for model in items:
        height, width = model["input_size"]
        table.add_row(
            model["name"],
            f"{height}x{width}",
            str(model["num_classes"]),
            str(model["default_layer"]),
        )
    Console().print(table)
