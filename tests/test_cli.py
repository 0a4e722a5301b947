"""The command line: bad input gives one line and exit code 2.

``fedens_process`` runs the real entry point (``python -m fedens``) in a subprocess; ``fedens``
calls the same ``fedens.cli.main`` in this process, with its output and exit code captured
(a subprocess costs about 5 s of imports per call).
"""

import contextlib
import io
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from fedens.cli import main


def fedens_process(*args, cwd):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "fedens", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def fedens(*args, cwd):
    """``fedens ARGS`` in this process: (returncode, stdout, stderr) as a subprocess would give."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.mark.parametrize(
    "override, expected",
    [
        ("federation.num_sites=0", ["federation.num_sites=0", "integer >= 1"]),
        ("partition.alpha=-1", ["partition.alpha=-1", "> 0"]),
        ("privacy.epsilon=0", ["privacy.epsilon=0", "> 0"]),
        ("privacy.epsilon=inf", ["privacy.epsilon=inf", "a finite number > 0"]),
        ("privacy.budget=nan", ["privacy.budget=nan", "a finite number > 0"]),
        ("combiner.top_k=11", ["combiner.top_k=11", "[1, experts.num_experts=10]"]),
        ("experiment=nope", ["experiment=nope", "quickstart"]),
        ("data.shift=sideways", ["data.shift='sideways'", "'none', 'scanners'"]),
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


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["experts.num_teachers=7"], "experts.num_teachers=7"),
        (["partition=dirichlet", "partition.alpha=-1"], "partition.alpha=-1"),
        (["privacy.sigma2=-40"], "privacy.sigma2=-40"),
        (["privacy.query_selection=random"], "privacy.query_selection='random'"),
        (["experts.train_timeout=0"], "experts.train_timeout=0"),
        (["experts.prior_correction=-1"], "experts.prior_correction=-1"),
    ],
)
def test_bad_pate_input_is_one_line_exit_2(tmp_path, overrides, expected):
    result = fedens("run", "experiment=pate_mnist", *overrides, f"hydra.run.dir={tmp_path / 'run'}",
                    cwd=tmp_path)
    assert result.returncode == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_bad_input_in_a_multirun_also_exits_2(tmp_path):
    result = fedens_process("run", "-m", "privacy.epsilon=0", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    cwd=tmp_path)
    assert result.returncode == 2
    assert "privacy.epsilon=0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "sweep").glob("**/results.json"))


def test_unknown_command_and_help(tmp_path):
    bad = fedens_process("train", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown command 'train'" in bad.stderr
    good = fedens("--help", cwd=tmp_path)
    assert good.returncode == 0 and "fedens run" in good.stdout


def test_cfg_job_prints_the_resolved_config(tmp_path):
    result = fedens_process("run", "--cfg", "job", "federation.num_sites=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "num_sites: 3" in result.stdout
    assert "name: quickstart" in result.stdout


def test_ledger_command_prints_each_site_and_json_recomputes(tmp_path):
    import json

    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    from fedens.privacy import PrivacyLedger, dpsgd_event

    for site, steps in (("0", 10), ("1", 40)):
        ledger = PrivacyLedger(tmp_path / "sites" / f"site_{site}" / "ledger.sqlite",
                               site=site, budget_epsilon=8.0, delta=1e-5)
        ledger.charge(dpsgd_event(1.0, 0.1, steps), mechanism="dpsgd", round=1)
        ledger.close()
    table = fedens_process("ledger", str(tmp_path), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.strip().splitlines()) == 3

    report = json.loads(fedens("ledger", str(tmp_path), "--json", cwd=tmp_path).stdout)
    for entry in report.values():
        accountant = RdpAccountant()
        for record in entry["records"]:
            # rebuild the event from its serialised named tuple, with dp-accounting alone
            e = record["event"]
            accountant.compose(dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    e["event"]["sampling_probability"],
                    dp_accounting.GaussianDpEvent(e["event"]["event"]["noise_multiplier"])),
                e["count"]))
        assert accountant.get_epsilon(entry["delta"]) == entry["epsilon"]
    assert report["1"]["epsilon"] > report["0"]["epsilon"]

    missing = fedens("ledger", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "no site ledgers" in missing.stderr


def snapshot(folder):
    """Every file under ``folder``: relative path -> (bytes, mtime)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(run_dir, finished):
    """A run directory as a run leaves it: Hydra's saved config, a site ledger, maybe results."""
    from fedens.privacy import PrivacyLedger, dpsgd_event

    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("the first run's config\n")
    ledger = PrivacyLedger(run_dir / "sites" / "site_0" / "ledger.sqlite", site="0", budget_epsilon=8.0,
                           delta=1e-5)
    ledger.charge(dpsgd_event(1.0, 0.1, 10), mechanism="dpsgd", round=1)
    ledger.close()
    (run_dir / "federation").mkdir()
    (run_dir / "federation" / "checkpoint.pkl").write_bytes(b"checkpoint")
    if finished:
        (run_dir / "results.json").write_text("{}")


@pytest.mark.parametrize("finished", [True, False])
def test_a_directory_that_holds_a_run_is_refused_before_anything_is_written(tmp_path, finished):
    run_dir = tmp_path / "run"
    fake_run(run_dir, finished)
    before = snapshot(run_dir)
    result = fedens_process("run", f"hydra.run.dir={run_dir}", "federation.num_rounds=2", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    state = "finished" if finished else "unfinished (it has sites)"
    assert line == (f"fedens: hydra.run.dir={run_dir} already holds a {state} fedens run: choose another "
                    "directory" + ("" if finished else f"; continue it with `fedens run resume={run_dir}`"))
    assert snapshot(run_dir) == before  # not even Hydra's saved config was overwritten


def test_resuming_a_finished_run_is_refused(tmp_path, compose):
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    fake_run(run_dir, finished=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose()))
    before = snapshot(run_dir)
    result = fedens("run", f"resume={run_dir}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"fedens: cannot resume {run_dir}: the run is finished (it has "
                                     "results.json); start a new run in another directory")
    assert snapshot(run_dir) == before


def test_the_ledger_command_reads_without_writing_and_names_a_bad_ledger(tmp_path):
    from fedens.privacy import PrivacyLedger, dpsgd_event

    for site in range(3):
        ledger = PrivacyLedger(tmp_path / "sites" / f"site_{site}" / "ledger.sqlite", site=str(site),
                               budget_epsilon=8.0, delta=1e-5)
        ledger.charge(dpsgd_event(1.0, 0.1, 10), mechanism="dpsgd", round=1)
        ledger.close()
    (tmp_path / "sites" / "site_1" / "ledger.sqlite").write_bytes(b"garbage" * 500)
    before = snapshot(tmp_path / "sites")
    table = fedens("ledger", str(tmp_path), cwd=tmp_path)
    assert table.returncode == 1
    rows = table.stdout.strip().splitlines()
    assert [r.split()[0] for r in rows[1:]] == ["0", "2"]  # the healthy sites still print
    (line,) = table.stderr.strip().splitlines()
    bad = tmp_path / "sites" / "site_1" / "ledger.sqlite"
    assert line.startswith(f"fedens: site_1: {bad}: not a readable privacy ledger")
    assert snapshot(tmp_path / "sites") == before  # reading wrote nothing, not even a -wal or -shm
    as_json = fedens("ledger", str(tmp_path), "--json", cwd=tmp_path)
    assert as_json.returncode == 1 and set(__import__("json").loads(as_json.stdout)) == {"0", "2"}


def test_the_ledger_command_has_help(tmp_path):
    result = fedens("ledger", "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: fedens ledger RUN_DIR [--json]")
    assert "read-only" in result.stdout


def test_version_and_run_help(tmp_path):
    import fedens as package

    version = fedens("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"fedens {package.__version__}"
    helped = fedens("run", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: fedens run")
    for listed in ("experiment=NAME", "quickstart", "pate_mnist", "ensemble: data=digits",
                   "pate: data=mnist", "partition: dirichlet, iid", "combiner: cascade, gated_ensemble"):
        assert listed in helped.stdout, listed
    assert "Hydra" not in helped.stdout.splitlines()[0] and not (tmp_path / "outputs").exists()
