"""Names of every Redis key, stream and channel the service uses: the one place that knows them."""

from __future__ import annotations

from dataclasses import dataclass

LANES = ("fast", "slow")
"""Cost lanes: ``fast`` for one forward+backward methods, ``slow`` for thousands of forwards."""

GROUP = "workers"
"""The consumer group every worker reads the lane streams in."""


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix, so deployments (and test runs) sharing a Redis stay apart."""

    prefix: str = "xplain"

    def stream(self, lane: str) -> str:
        """The job stream of a cost lane."""
        return f"{self.prefix}:stream:{lane}"

    @property
    def dead_letter(self) -> str:
        """Stream of envelopes that exhausted ``max_attempts``."""
        return f"{self.prefix}:stream:dead"

    def job(self, job_id: str) -> str:
        """Hash: the job record (status, progress, timings, error, request)."""
        return f"{self.prefix}:job:{job_id}"

    def image(self, job_id: str) -> str:
        """String: the upload, re-encoded as an RGB PNG by the gateway."""
        return f"{self.prefix}:job:{job_id}:image"

    def result(self, job_id: str) -> str:
        """String: the result JSON without the heatmap floats."""
        return f"{self.prefix}:job:{job_id}:result"

    def heatmap(self, job_id: str) -> str:
        """String: the heatmap, float32 little-endian, row-major, model input resolution."""
        return f"{self.prefix}:job:{job_id}:heatmap"

    def events(self, job_id: str) -> str:
        """Pub/sub channel: progress and final-status events of one job."""
        return f"{self.prefix}:events:{job_id}"

    @property
    def events_pattern(self) -> str:
        """Pattern matching every job's events channel (one gateway subscription for all)."""
        return f"{self.prefix}:events:*"

    def job_id_from_channel(self, channel: str) -> str:
        """Inverse of :meth:`events`."""
        return channel.removeprefix(f"{self.prefix}:events:")

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        """String with TTL: one worker's JSON announcement (models, lanes, device)."""
        return f"{self.prefix}:worker:{worker_id}"

    def active(self, owner: str) -> str:
        """Sorted set: an identity's queued and running jobs (score: when the entry expires)."""
        return f"{self.prefix}:active:{owner}"

    def rate(self, owner: str) -> str:
        """String: an identity's rate-limit bucket (GCRA theoretical arrival time)."""
        return f"{self.prefix}:rate:{owner}"

    def idempotency(self, owner: str, digest: str) -> str:
        """String ``<job id> <request digest>``: a POST's ``Idempotency-Key`` (hashed)."""
        return f"{self.prefix}:idem:{owner}:{digest}"

    def cache(self, digest: str) -> str:
        """String: the succeeded job whose result answers this work (image, model, method,
        effective parameters, target, metrics)."""
        return f"{self.prefix}:cache:{digest}"

    @property
    def webhooks(self) -> str:
        """Stream of webhook deliveries to make (job ids), read by the gateways."""
        return f"{self.prefix}:stream:webhooks"

    @property
    def webhook_retries(self) -> str:
        """Sorted set: deliveries to try again (member: ``<job id> <attempt>``; score: when)."""
        return f"{self.prefix}:webhooks:retry"

    @property
    def metrics(self) -> str:
        """Hash: counters and histogram buckets the workers add to, the gateway exports."""
        return f"{self.prefix}:metrics"
