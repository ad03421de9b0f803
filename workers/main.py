"""``python -m workers``: settings -> runtime -> signal handlers -> loop.

The first SIGTERM (or SIGINT) stops claiming, lets the jobs that finish within ``drain_s``
finish, hands the others back to their stream at their next chunk boundary, and exits; the
second exits at once (its in-flight jobs are taken over by another worker after the visibility
timeout).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

import redis

from app.contract.connection import sync_client
from app.contract.keys import Keys
from app.logs import configure_logging
from app.settings import Settings, get_settings, redis_target
from workers.loop import Heartbeat, Worker
from workers.queue import WorkerQueue
from workers.runtime import Runtime, build_runtime

log = logging.getLogger("workers.main")

EXIT_NOW = 128 + signal.SIGTERM


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: drain (finish or hand back) and exit; second: exit at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("event=exit_now signal=%s", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(EXIT_NOW)
        log.info("event=stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def make_queue(settings: Settings, runtime: Runtime) -> WorkerQueue:
    """The Redis side of this worker, configured from ``settings``."""
    client = sync_client(redis_target(settings), health_check_interval=30)
    return WorkerQueue(
        client,
        Keys(settings.key_prefix),
        runtime.worker_id,
        claim_count=settings.claim_count,
        visibility_timeout_s=settings.visibility_timeout_s,
        max_attempts=settings.max_attempts,
        job_ttl_s=settings.job_ttl_s,
        heartbeat_ttl_s=settings.heartbeat_ttl_s,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )


def serve(settings: Settings, stop: threading.Event) -> int:
    """Load the models, announce them, and run the claim loop until ``stop``."""
    runtime = build_runtime(settings)
    queue = make_queue(settings, runtime)
    worker = Worker(
        runtime,
        queue,
        stop,
        block_ms=int(min(1.0, settings.heartbeat_interval_s) * 1000),
        recover_interval_s=settings.heartbeat_interval_s,
        drain_s=settings.drain_s,
        ageing=settings.scheduler_ageing,
        pass_budget_s=settings.pass_budget_ms / 1000.0,
    )
    heartbeat = Heartbeat(worker, settings.heartbeat_interval_s, settings.health_file)
    while not stop.is_set():  # the first announcement waits for Redis
        try:
            heartbeat.beat()
            break
        except redis.RedisError as error:
            log.error("event=redis_unavailable during=start error=%r", error)
            stop.wait(1.0)
    heartbeat.start()
    log.info(
        "event=worker_ready worker=%s lanes=%s device=%s models=%s",
        runtime.worker_id,
        ",".join(runtime.lanes),
        runtime.device,
        ",".join(runtime.models),
    )
    try:
        worker.run()
    finally:
        heartbeat.halt.set()
        heartbeat.join(timeout=5)
        try:
            queue.withdraw(runtime.worker_id)
        except redis.RedisError:
            log.exception("event=withdraw_failed")
    log.info("event=worker_stopped worker=%s jobs_done=%d", runtime.worker_id, worker.jobs_done)
    return 0


def main() -> int:
    """Entry point of ``python -m workers``."""
    settings = get_settings()
    configure_logging(json_lines=settings.log_json)
    stop = threading.Event()
    install_signal_handlers(stop)
    return serve(settings, stop)
