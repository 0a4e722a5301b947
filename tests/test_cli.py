"""The command line, through a subprocess: bad input gives one line and exit code 2."""

import os
import subprocess
import sys

import pytest


def fedens(*args, cwd):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "fedens", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("federation.num_sites=0", ["federation.num_sites=0", "integer >= 1"]),
        ("partition.alpha=-1", ["partition.alpha=-1", "> 0"]),
        ("privacy.epsilon=0", ["privacy.epsilon=0", "> 0"]),
        ("combiner.top_k=11", ["combiner.top_k=11", "[1, experts.num_experts=10]"]),
        ("experiment=nope", ["experiment=nope", "quickstart"]),
        ("no_such_key=1", ["'no_such_key'", "no_such_key=1"]),
        ("federation.no_such_key=1", ["'federation.no_such_key'"]),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, override, expected):
    run_dir = tmp_path / "run"
    result = fedens("run", override, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedens: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()


def test_bad_input_in_a_multirun_also_exits_2(tmp_path):
    result = fedens("run", "-m", "privacy.epsilon=0", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    cwd=tmp_path)
    assert result.returncode == 2
    assert "privacy.epsilon=0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "sweep").glob("**/results.json"))


def test_unknown_command_and_help(tmp_path):
    bad = fedens("train", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown command 'train'" in bad.stderr
    good = fedens("--help", cwd=tmp_path)
    assert good.returncode == 0 and "fedens run" in good.stdout


def test_cfg_job_prints_the_resolved_config(tmp_path):
    result = fedens("run", "--cfg", "job", "federation.num_sites=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "num_sites: 3" in result.stdout
    assert "name: quickstart" in result.stdout
