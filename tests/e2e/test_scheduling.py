"""Fair scheduling through the real gateway and worker: a cheap job is not held behind a long one
of its own lane, jobs of different methods share forward passes and get the maps they get alone,
and a cancelled long job stops taking passes at once.

The test model ``tiny_slow`` sleeps 20 ms in every forward pass, whatever its batch: a pass that
carries the rows of two jobs costs what a pass of one job costs, as a GPU pass nearly does.
"""

from __future__ import annotations

import time

import torch

from tests.e2e.conftest import Service
from tests.e2e.test_http import noise, poll, submit
from tests.worker.nets import build_slow
from workers.explainers import ModelHandle, get_explainer
from workers.explainers.postprocess import normalise
from workers.handler import decode_image, preprocess

LONG_RISE = {"n_masks": 400, "max_batch_size": 1}
"""401 passes of 20 ms: 8 s alone."""


def metric(service: Service, name: str) -> float:
    for line in service.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_cheap_job_finishes_while_a_long_job_of_its_lane_claimed_before_it_runs(
    live: Service,
) -> None:
    long = submit(
        live, noise(32, 32, 7), method="rise", model="tiny_slow", params=LONG_RISE, wait=0
    )
    assert long.status_code == 202, long.text
    poll(live, long.headers["location"], {"running"})
    time.sleep(0.3)  # the long job is well under way
    cheap = submit(
        live,
        noise(32, 32, 8),
        method="occlusion",
        model="tiny_slow",
        params={"window": 16, "stride": 16, "max_batch_size": 1},  # 5 passes
        wait=20,
    )
    assert cheap.status_code == 200, cheap.text
    assert cheap.json()["timings"]["total_ms"] < 2000  # 5 passes, not behind 400 of another
    state = live.http.get(long.headers["location"]).json()
    assert state["status"] == "running" and state["progress"] < 0.9
    assert cheap.json()["cost"]["forward_passes"] == 5
    live.http.delete(long.headers["location"])


def test_jobs_of_different_methods_share_forward_passes_and_get_their_own_maps(
    live: Service,
) -> None:
    shared_before = metric(live, "xplain_forward_shared_passes_total")
    jobs = {
        "occlusion": ({"window": 8, "stride": 8, "max_batch_size": 2}, noise(32, 32, 11)),
        "rise": ({"n_masks": 24, "max_batch_size": 2, "seed": 5}, noise(32, 32, 12)),
        "lime": ({"num_samples": 20, "segmentation": "slic", "segments": 6,
                  "max_batch_size": 2}, noise(32, 32, 13)),
    }  # fmt: skip
    locations = {
        method: submit(
            live, image, method=method, model="tiny_slow", params=params, wait=0
        ).headers["location"]
        for method, (params, image) in jobs.items()
    }
    done = {m: poll(live, url, {"succeeded", "failed"}, 60) for m, url in locations.items()}
    assert all(body["status"] == "succeeded" for body in done.values()), done
    assert all(body["meta"]["shared_forward_batches"] > 0 for body in done.values())
    assert metric(live, "xplain_forward_shared_passes_total") > shared_before
    # Each map is what the method gives for that image alone, in this process.
    handle = ModelHandle(
        "tiny_slow", build_slow(3).eval(), (32, 32), (0.5,) * 3, (0.25,) * 3, ("r", "g", "b"),
        "features.2",
    )  # fmt: skip
    for method, (params, image) in jobs.items():
        x = preprocess(decode_image(image), handle)[None]
        alone = get_explainer(method)(handle, x, torch.tensor([-1]), **params).saliency
        expected = normalise(alone.float())[0].numpy()
        got = torch.tensor(done[method]["heatmap"]["data"]).numpy()
        assert abs(got - expected).max() < 2e-3, method  # the JSON rows carry 4 decimals


def test_cancelling_a_long_job_frees_its_share_at_once(live: Service) -> None:
    long = submit(
        live, noise(32, 32, 9), method="rise", model="tiny_slow", params=LONG_RISE, wait=0
    )
    url = long.headers["location"]
    poll(live, url, {"running"})
    time.sleep(0.3)
    passes_before = metric(live, "xplain_forward_passes_total")
    assert live.http.delete(url).status_code == 200
    time.sleep(1.5)  # a poll of the records every 0.2 s; metrics are flushed with it
    stopped_at = metric(live, "xplain_forward_passes_total")
    time.sleep(1.0)
    assert metric(live, "xplain_forward_passes_total") == stopped_at  # no pass since
    assert stopped_at - passes_before < 40  # it stopped within a few tenths of a second
    assert live.http.get(url).json()["status"] == "cancelled"
