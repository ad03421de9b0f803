"""Which claimed jobs run together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.contract.jobs import JobEnvelope
from workers.grouping import Job, effective_params, group_jobs


def job(n: int, method: str = "gradcam", params: dict | None = None, model: str = "m") -> Job:
    lane = "fast" if method == "gradcam" else "slow"
    envelope = JobEnvelope(
        job_id=f"j{n}",
        lane=lane,
        model=model,
        method=method,
        params=params or {},
        target=n % 3,
        enqueued_at=0.0,
    )
    return Job(envelope, lane, f"{n}-0", "", effective_params(method, params, 32))


def test_effective_params_fill_the_workers_batch_size_and_keep_a_clients() -> None:
    assert effective_params("occlusion", {}, 32)["max_batch_size"] == 32
    assert effective_params("occlusion", {"max_batch_size": 8}, 32)["max_batch_size"] == 8
    assert effective_params("gradcam", {}, 32) == {"layer": None}
    with pytest.raises(ValidationError):
        effective_params("occlusion", {"windw": 3}, 32)
    with pytest.raises(KeyError):
        effective_params("nope", {}, 32)


def test_jobs_group_by_model_method_and_params_fast_lane_first() -> None:
    jobs = [
        job(0, "occlusion", {"window": 8}),
        job(1),
        job(2, "occlusion", {"window": 8, "max_batch_size": 32}),  # same effective params as 0
        job(3, "occlusion", {"window": 16}),
        job(4, model="other"),
        job(5, params={"layer": "features.2"}),
        job(6),
    ]
    groups = [[j.job_id for j in g] for g in group_jobs(jobs)]
    assert groups == [["j1", "j6"], ["j4"], ["j5"], ["j0", "j2"], ["j3"]]


def test_params_order_does_not_split_a_group() -> None:
    a = job(0, "occlusion", {"window": 8, "stride": 4})
    b = job(1, "occlusion", {"stride": 4, "window": 8})
    assert a.key == b.key
    assert len(group_jobs([a, b])) == 1
