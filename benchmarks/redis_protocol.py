"""What one Redis sustains with this queue protocol, what a job costs it, and what WAIT buys.

``.venv/bin/python -m benchmarks.redis_protocol`` starts its own ``redis-server`` (and, for the
last two parts, a replica) and measures, with no model (a worker that "computes" nothing):

1. **Jobs per second**: producers run the gateway's enqueue script (``app.queue.JobQueue``)
   while consumers run the worker's claim, admit and result scripts (``workers.queue``) on the
   same Redis, for ``--seconds``; jobs finished per second, and Redis's own CPU per job.
2. **Memory per job**: ``used_memory`` after that many finished jobs (image, record, result and
   heatmap kept for the TTL), divided by the jobs.
3. **The cost of WAIT**: enqueue latency (p50 / p95) with ``redis_wait_replicas`` 0 and 1 on a
   primary with one replica.
4. **What a failover loses**: producers enqueue as fast as they can, the primary is killed, and
   the acknowledged jobs missing on the replica are counted, without and with WAIT.

Writes ``benchmarks/results/redis_protocol.md`` with ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import redis

from app.contract.connection import RedisTarget, async_client
from app.contract.jobs import JobCost, JobEnvelope
from app.contract.keys import Keys
from app.queue import JobQueue, NewJob
from benchmarks.stack import free_port, wait_until
from workers.queue import Finished, WorkerQueue

IMAGE = os.urandom(30_000)
"""About a 112-px scene's PNG."""
HEATMAP = os.urandom(112 * 112 * 4)
RESULT = '{"job_id": "x", "model": "shapes", "predictions": []}' + " " * 1500


@contextmanager
def server(*extra: str) -> Iterator[int]:
    """A redis-server on a free port (no persistence); its port."""
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    work = tempfile.mkdtemp(prefix="xplain-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", work,
         "--repl-diskless-sync-delay", "0", *extra],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(redis.Redis(port=port).ping, 10, "redis")
        yield port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def new_job(keys: Keys) -> NewJob:
    envelope = JobEnvelope(
        job_id=uuid.uuid4().hex, lane="fast", model="shapes", method="gradcam", params={},
        enqueued_at=time.time(), cost=JobCost(forward_passes=1, backward_passes=1, seconds=0.01),
    )  # fmt: skip
    return NewJob(envelope, IMAGE, 112, 112)


async def produce(queue: JobQueue, keys: Keys, until: float, latencies: list[float]) -> int:
    made = 0
    while time.monotonic() < until:
        started = time.perf_counter()
        outcome = await queue.enqueue(new_job(keys))
        latencies.append(time.perf_counter() - started)
        made += outcome.accepted
    return made


def consume(port: int, keys: Keys, until: float, name: str) -> int:
    client = redis.Redis(port=port)
    queue = WorkerQueue(client, keys, name, claim_count=16, visibility_timeout_s=30,
                        max_attempts=3, job_ttl_s=3600, heartbeat_ttl_s=10)  # fmt: skip
    queue.ensure_groups(["fast"])
    done = 0
    while time.monotonic() < until + 2:
        entries = queue.claim(["fast"], 100)
        if not entries:
            if time.monotonic() > until:
                break
            continue
        ids = [e.envelope.split('"job_id":"')[1][:32] for e in entries if e.envelope]
        queue.admit(ids)
        finished = [Finished("fast", e.entry_id, job_id, RESULT, HEATMAP)
                    for e, job_id in zip(entries, ids, strict=True)]  # fmt: skip
        done += sum(queue.finish(finished))
    return done


def throughput(port: int, producers: int, consumers: int, seconds: float) -> dict[str, float]:
    keys = Keys(f"b{uuid.uuid4().hex[:6]}")
    admin = redis.Redis(port=port)
    memory_before = admin.info("memory")["used_memory"]
    cpu_before = admin.info("cpu")
    until = time.monotonic() + seconds

    async def producing() -> int:
        client = async_client(RedisTarget(f"redis://127.0.0.1:{port}/0"))
        queue = JobQueue(client, keys, job_ttl_s=3600, max_queue_depth=10**9)
        made = await asyncio.gather(*(produce(queue, keys, until, []) for _ in range(producers)))
        await client.aclose()
        return sum(made)

    results: list[int] = []

    def consumer(index: int) -> None:
        results.append(consume(port, keys, until, f"c{index}"))

    threads = [threading.Thread(target=consumer, args=(i,)) for i in range(consumers)]
    for thread in threads:
        thread.start()
    made = asyncio.run(producing())
    for thread in threads:
        thread.join()
    done = sum(results)
    cpu_after = admin.info("cpu")
    redis_cpu = (cpu_after["used_cpu_sys"] + cpu_after["used_cpu_user"]
                 - cpu_before["used_cpu_sys"] - cpu_before["used_cpu_user"])  # fmt: skip
    memory = admin.info("memory")["used_memory"] - memory_before
    return {"made": made, "done": done, "jobs_per_s": done / seconds,
            "redis_cpu_ms_per_job": 1000 * redis_cpu / max(1, done),
            "bytes_per_job": memory / max(1, done)}  # fmt: skip


def enqueue_latency(port: int, wait: int, count: int) -> tuple[float, float]:
    keys = Keys(f"w{uuid.uuid4().hex[:6]}")

    async def run() -> list[float]:
        client = async_client(RedisTarget(f"redis://127.0.0.1:{port}/0"))
        queue = JobQueue(client, keys, job_ttl_s=3600, max_queue_depth=10**9,
                         wait_replicas=wait, wait_timeout_ms=1000)  # fmt: skip
        latencies: list[float] = []
        for _ in range(count):
            started = time.perf_counter()
            await queue.enqueue(new_job(keys))
            latencies.append(time.perf_counter() - started)
        await client.aclose()
        return latencies

    values = np.array(asyncio.run(run())) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def replicating(primary: int, replica: int) -> None:
    """Make ``replica`` replicate ``primary`` and wait until the link is up."""
    redis.Redis(port=replica).execute_command("REPLICAOF", "127.0.0.1", primary)
    wait_until(
        lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up",
        30,
        "the replica's link",
    )


def failover_loss(wait: int, seconds: float = 2.0) -> tuple[int, int]:
    """(acknowledged enqueues, of them missing on the replica) when the primary is killed in
    the middle of a stream of enqueues."""
    with server() as primary, server() as replica:
        replicating(primary, replica)
        keys = Keys(f"f{uuid.uuid4().hex[:6]}")
        acknowledged: list[str] = []
        pid = int(redis.Redis(port=primary).info("server")["process_id"])
        killer = threading.Timer(seconds, os.kill, args=(pid, signal.SIGKILL))

        async def run() -> None:
            client = async_client(RedisTarget(f"redis://127.0.0.1:{primary}/0"), retries=0)
            queue = JobQueue(client, keys, job_ttl_s=3600, max_queue_depth=10**9,
                             wait_replicas=wait, wait_timeout_ms=1000)  # fmt: skip

            async def one_producer() -> None:
                while True:
                    job = new_job(keys)
                    try:
                        if (await queue.enqueue(job)).accepted:
                            acknowledged.append(job.envelope.job_id)
                    except redis.RedisError:
                        return  # the primary is gone

            killer.start()
            await asyncio.gather(*(one_producer() for _ in range(8)))

        asyncio.run(run())
        survivor = redis.Redis(port=replica)
        pipe = survivor.pipeline(transaction=False)
        for job_id in acknowledged:
            pipe.exists(keys.job(job_id))
        present = sum(pipe.execute())
        return len(acknowledged), len(acknowledged) - present


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with server() as port:
        version = redis.Redis(port=port).info("server")["redis_version"]
        got = throughput(port, args.producers, args.consumers, args.seconds)
    with server() as primary, server() as replica:
        replicating(primary, replica)
        no_wait = enqueue_latency(primary, 0, 500)
        with_wait = enqueue_latency(primary, 1, 500)
    loss = {wait: failover_loss(wait) for wait in (0, 1)}
    lines = [
        f"Redis {version} on this machine (2 shared cores: the producers, consumers and Redis "
        "share them, so Redis alone on a core of its own does more).",
        "",
        "| measure | result |",
        "|---|---|",
        f"| jobs/s (enqueue + claim + admit + result, {args.producers} producers, "
        f"{args.consumers} consumers, {args.seconds:.0f} s) | **{got['jobs_per_s']:.0f}** |",
        f"| Redis CPU per job | {got['redis_cpu_ms_per_job']:.3f} ms |",
        f"| Redis memory per finished job (30 KB image, 112² heatmap, result, record) | "
        f"{got['bytes_per_job'] / 1024:.0f} KB |",
        f"| enqueue latency p50 / p95, no WAIT | {no_wait[0]:.2f} / {no_wait[1]:.2f} ms |",
        f"| enqueue latency p50 / p95, WAIT for 1 replica | {with_wait[0]:.2f} / "
        f"{with_wait[1]:.2f} ms |",
        f"| acknowledged jobs lost when the primary is killed, no WAIT | {loss[0][1]} of "
        f"{loss[0][0]} |",
        f"| acknowledged jobs lost when the primary is killed, WAIT 1 | {loss[1][1]} of "
        f"{loss[1][0]} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(
            "# One Redis: jobs per second, memory per job, the cost and the worth of WAIT\n\n"
            f"Command: `.venv/bin/python -m benchmarks.redis_protocol --seconds {args.seconds:.0f}"
            " --out benchmarks/results/redis_protocol.md`\n\n" + text
        )


if __name__ == "__main__":
    main()
