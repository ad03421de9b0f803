"""Settings for the gateway and the worker, read once from ``XPLAIN_*`` environment variables.

Nothing below ``create_app`` or ``workers.main`` reads the environment: they receive a
``Settings`` object and pass values down explicitly.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.contract.connection import RedisTarget


class Settings(BaseSettings):
    """Every knob of the service; the README's configuration table lists them."""

    model_config = SettingsConfigDict(env_prefix="XPLAIN_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding the job streams, records and results.",
    )
    redis_sentinels: str = Field(
        "",
        description="Sentinels (host:port, comma-separated) to ask for the Redis primary; with "
        "them, XPLAIN_REDIS_URL gives only the database number and credentials.",
    )
    redis_sentinel_master: str = Field(
        "xplain", description="The master name the sentinels monitor."
    )
    redis_wait_replicas: int = Field(
        0,
        description="Replicas an enqueue and a result write wait for (Redis WAIT) before they "
        "count as done; 0: none (a failover may lose the last writes).",
    )
    redis_wait_timeout_ms: int = Field(
        100, description="Longest an enqueue or result write waits for its replicas."
    )
    key_prefix: str = Field(
        "xplain", description="Prefix of every Redis key and channel (isolates deployments/tests)."
    )
    # --- gateway -------------------------------------------------------------------------
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, description="Largest accepted upload (413 above)."
    )
    max_image_pixels: int = Field(
        16_000_000,
        description="Largest accepted width x height of an upload (413 above; refused from the "
        "header, before decoding); a model's `max_image_pixels` in models.toml lowers it.",
    )
    max_decoding: int = Field(
        2,
        description="Uploads a gateway decodes at once (the others wait): bounds decoding "
        "memory to about this many times the largest image.",
    )
    max_header_bytes: int = Field(
        16_384,
        description="Largest total size of a request's headers (431 above); `python -m app` "
        "also bounds what the HTTP parser buffers.",
    )
    default_wait_s: float = Field(
        30.0,
        description="How long POST /v1/explanations waits for the result before answering 202.",
    )
    max_wait_s: float = Field(120.0, description="Upper bound of the `wait` a client may ask for.")
    max_queue_depth: int = Field(
        500, description="Jobs waiting in one lane beyond which new jobs get 503 + Retry-After."
    )
    max_job_cost: float = Field(
        300.0,
        description="Largest estimated compute seconds of one job (cost model: passes x the "
        "worker's measured per-image pass times); costlier jobs get 422 before queueing.",
    )
    api_key: str | None = Field(
        None,
        description="Single-key shorthand: every /v1 request must send it as `X-API-Key` (or "
        "Bearer); its identity is `default`.",
    )
    keys_file: str | None = Field(
        None,
        description="TOML file of API keys as identities (name, SHA-256, limits; `xplain-keys` "
        "manages it), re-read when it changes. Without it and XPLAIN_API_KEY: open.",
    )
    cors_origins: str = Field(
        "",
        description="Origins allowed to call the API from a browser, comma-separated "
        "(e.g. https://app.example.com); empty: none.",
    )
    webhook_hosts: str = Field(
        "",
        description="Hosts (or host:port) a job's `callback_url` may name, comma-separated; "
        "empty: webhooks are refused. No request goes to any other address.",
    )
    webhook_secret: str | None = Field(
        None,
        description="Secret of the webhooks' HMAC-SHA256 signature (a key's own "
        "`webhook_secret` wins).",
    )
    log_json: bool = Field(False, description="Log one JSON object per line (gateway and worker).")
    # --- jobs and queue -------------------------------------------------------------------
    job_ttl_s: int = Field(
        3600, description="Lifetime of job records, images and results in Redis."
    )
    visibility_timeout_s: float = Field(
        30.0, description="Idle time after which a job claimed by a silent worker is taken over."
    )
    max_attempts: int = Field(
        3, description="Deliveries of one job before it goes to the dead-letter stream as failed."
    )
    heartbeat_interval_s: float = Field(2.0, description="How often a worker announces itself.")
    heartbeat_ttl_s: float = Field(
        10.0, description="A worker silent for this long counts as gone."
    )
    # --- worker ---------------------------------------------------------------------------
    models_file: str | None = Field(
        None, description="models.toml naming the models a worker serves (default: the demo model)."
    )
    device: str = Field("auto", description="Torch device of a worker: auto, cpu, cuda, cuda:1 ...")
    lanes: str = Field("fast,slow", description="Cost lanes a worker serves, comma-separated.")
    claim_count: int = Field(16, description="Jobs a worker claims at once (XREADGROUP COUNT).")
    max_batch_size: int = Field(
        64,
        description="Rows per forward pass on this worker: the batcher packs the rows of "
        "every job into passes of at most this size, and no job's chunk is larger.",
    )
    pass_budget_ms: float = Field(
        25.0,
        description="Longest a packed forward pass should take (from the measured time per "
        "row; never under an eighth of the batch size): bounds how long any job waits for "
        "the pass that is running. A GPU's full batch fits; on a CPU passes get shorter.",
    )
    drain_s: float = Field(
        10.0,
        description="On SIGTERM, jobs whose estimated remaining work fits in this many "
        "seconds finish; the others are handed back to the queue at their next chunk.",
    )
    scheduler_ageing: float = Field(
        0.1,
        description="Seconds of priority a waiting task gains per second waited (the "
        "scheduler runs the least remaining estimated work first; ageing prevents starvation).",
    )
    torch_threads: int = Field(
        0, description="torch.set_num_threads on a worker (0: torch's default)."
    )
    worker_name: str | None = Field(None, description="Consumer name (default: host-pid).")
    health_file: str | None = Field(
        None,
        description="A file the worker touches at every heartbeat once its models are loaded "
        "(for container probes: alive while it is fresh).",
    )


def redis_target(settings: Settings) -> RedisTarget:
    """Where the settings say Redis is."""
    return RedisTarget(settings.redis_url, settings.redis_sentinels, settings.redis_sentinel_master)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
