"""fedens as users install it: a wheel built from this tree carries the code and the configs, and
``fedens run`` from that install, in an empty folder, runs the quickstart and writes its outputs
there (no checkout on the path)."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_installed_wheel_runs_the_quickstart_in_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("fedens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fedens/conf/config.yaml" in names and "fedens/conf/experiment/quickstart.yaml" in names
    assert "fedens/pipelines/ensemble.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "experiments/"))]

    installed = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(installed),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed), "FLWR_TELEMETRY_ENABLED": "0"}
    where = subprocess.run([sys.executable, "-c", "import fedens; print(fedens.__file__)"], cwd=empty,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(installed)  # the wheel's fedens, not this checkout
    done = subprocess.run([sys.executable, "-m", "fedens", "run", "federation.num_sites=2",
                           "federation.num_rounds=1", "combiner.central_epochs=2",
                           "combiner.pretrain_epochs=1", "federation.personalization.holdout=0"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (results,) = (empty / "outputs" / "quickstart").glob("*/results.json")
    report = json.loads(results.read_text())
    assert report["pipeline"] == "ensemble" and report["data"]["num_sites"] == 2
    assert report["environment"]["git_commit"] is None  # an install, not a checkout
