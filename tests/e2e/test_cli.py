"""The ``xplain`` command, installed by the package, against the real gateway and worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.e2e.conftest import Service
from tests.worker.support import png

XPLAIN = Path(sys.executable).with_name("xplain")


def xplain(service_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed command the way a shell user would."""
    return subprocess.run(
        [str(XPLAIN), "--url", service_url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def an_image(tmp_path: Path, width: int = 48, height: int = 40) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path / "photo.png"
    path.write_bytes(png(rng.integers(0, 256, size=(height, width, 3))))
    return path


def test_the_command_is_installed() -> None:
    assert XPLAIN.exists(), "pip install . must install the xplain command"


def test_models_and_methods_are_listed(live: Service) -> None:
    models = xplain(live.url, "models")
    assert models.returncode == 0, models.stderr
    assert "tiny" in models.stdout and "32x32" in models.stdout
    methods = xplain(live.url, "methods")
    assert methods.returncode == 0, methods.stderr
    for name in ("gradcam", "occlusion", "rise"):
        assert name in methods.stdout


def test_explain_saves_a_heatmap_of_the_images_size(live: Service, tmp_path: Path) -> None:
    image = an_image(tmp_path)
    out = tmp_path / "heat.png"
    done = xplain(live.url, "explain", str(image), "--model", "tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and str(out) in done.stdout
    with Image.open(out) as heat:
        assert heat.size == (48, 40)
        assert heat.mode == "RGB"


def test_json_output_and_the_job_command(live: Service, tmp_path: Path) -> None:
    image = an_image(tmp_path)
    args = ["explain", str(image), "--model", "tiny", "--method", "occlusion", "--json"]
    done = xplain(live.url, *args, "--param", "window=8", "--param", "stride=4", "--target", "blue")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    assert result["target"]["label"] == "blue"
    assert result["params"]["window"] == 8
    assert Path(result["saved_to"]).exists()
    job = xplain(live.url, "job", result["job_id"], "--json")
    assert job.returncode == 0, job.stderr
    assert json.loads(job.stdout)["job_id"] == result["job_id"]


def test_a_long_job_is_waited_for(live: Service, tmp_path: Path) -> None:
    image = an_image(tmp_path)
    params = ["--param", "window=8", "--param", "stride=4", "--param", "max_batch_size=1"]
    done = xplain(
        live.url, "explain", str(image), "--model", "tiny_slow", "--method", "occlusion", *params
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout


def test_refused_requests_exit_3_with_one_clear_line(live: Service, tmp_path: Path) -> None:
    image = an_image(tmp_path)
    done = xplain(live.url, "explain", str(image), "--model", "tiny", "--method", "nonsense")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xplain: error:") and "nonsense" in lines[0]
    bad = xplain(live.url, "explain", str(image), "--model", "tiny", "--param", "layer=nope")
    assert bad.returncode == 3 and "nope" in bad.stderr
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"this is not an image")
    broken = xplain(live.url, "explain", str(garbage), "--model", "tiny")
    assert broken.returncode == 3 and broken.stderr.startswith("xplain: error:")


def test_usage_and_connection_errors(tmp_path: Path) -> None:
    missing = xplain("http://127.0.0.1:9", "explain", str(tmp_path / "absent.png"))
    assert missing.returncode == 2 and "no such image file" in missing.stderr
    unreachable = xplain("http://127.0.0.1:9", "models")
    assert unreachable.returncode == 4 and "cannot reach" in unreachable.stderr
    usage = xplain("http://127.0.0.1:9", "explain")
    assert usage.returncode == 2
