"""The coordinator ships the shared experts and initial combiner; sites that hold only their
data and ledger train on them, from a cache named by sha256 that detects altered files.
The real ClientApp and ServerApp code, run in process (no Ray)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from in_process_grid import InProcessGrid

from fedens import validate
from fedens.federation import layout as L
from fedens.federation import shipping
from fedens.federation.ensemble.client import make_client_app
from fedens.federation.ensemble.server import coordinate
from fedens.federation.outputs_cache import outputs_path
from fedens.pipelines.ensemble import federation_settings, prepare
from fedens.runs import ConfigError

NUM_SITES = 2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from fedens.runs import compose as _compose

    cfg = _compose([f"federation.num_sites={NUM_SITES}", "federation.num_rounds=2",
                    "experts.num_experts=3", "experts.families=[logreg,naive_bayes]",
                    "combiner.top_k=1", "privacy.epsilon=4"])
    source = tmp_path_factory.mktemp("prepared")
    prepare(cfg, source)
    return cfg, source


@pytest.fixture
def coordinator(prepared, tmp_path):
    """The coordinator's run directory and, apart from it, each site's own folder with its data."""
    cfg, source = prepared
    run_dir = tmp_path / "coordinator"
    shutil.copytree(source, run_dir)
    for site in range(NUM_SITES):
        (tmp_path / f"site_{site}").mkdir()
        shutil.move(L.site_dir(run_dir, site) / "data.npz", tmp_path / f"site_{site}" / "data.npz")
    shutil.rmtree(run_dir / "sites")
    return cfg, run_dir


def settings_of(cfg, run_dir):
    return {**federation_settings(cfg, run_dir), L.HOLDOUT: 0.0}


def remote_sites(settings, **node_config):
    """Sites on other machines: their node_config names their data and ledger; the coordinator's
    run settings point at a directory they cannot see."""
    home = Path(settings[L.RUN_DIR]).parent
    nowhere = home / "not-on-this-machine"
    site_settings = {**settings, L.RUN_DIR: str(nowhere), L.EXPERTS_PATH: str(nowhere / "experts.skops"),
                     L.INITIAL_COMBINER_PATH: str(nowhere / "initial_combiner.pt")}
    grid = InProcessGrid(make_client_app(site_settings), NUM_SITES)
    for context in grid.contexts.values():
        folder = home / f"site_{context.node_config[L.PARTITION_ID]}"
        context.node_config.update({L.DATA_PATH: str(folder / "data.npz"),
                                    L.LEDGER_PATH: str(folder / "ledger.sqlite"), **node_config})
    return grid


def federate(grid, settings):
    coordinate(grid, settings, progress=None)
    out = L.federation_dir(settings[L.RUN_DIR])
    return json.loads((out / "rounds.json").read_text()), torch.load(out / "global_combiner.pt")


@pytest.mark.parametrize("inline", [True, False], ids=["with-the-roll-call", "in-their-own-message"])
def test_sites_with_only_their_data_and_ledger_train_on_shipped_files(coordinator, tmp_path, monkeypatch,
                                                                      inline):
    cfg, run_dir = coordinator
    shipments = []
    receive = shipping.receive
    monkeypatch.setattr(shipping, "receive", lambda *args: shipments.append(1) or receive(*args))
    # not inline: as for files too large to go with every roll call (federation.ship_inline_bytes=0)
    settings = {**settings_of(cfg, run_dir), **({} if inline else {L.SHIP_INLINE_BYTES: 0})}
    report, shipped = federate(remote_sites(settings), settings)
    assert len(shipments) == (0 if inline else NUM_SITES)
    assert [r["sites_reporting"] for r in report["rounds"]] == [0, NUM_SITES, NUM_SITES]
    assert report["failures"] == {"1": [], "2": []}
    digests = shipping.Shipment.of(settings_of(cfg, run_dir)).digests
    for site in range(NUM_SITES):
        cached = sorted(p.name for p in (tmp_path / f"site_{site}" / "cache" / "shared").iterdir())
        assert cached == sorted(digests.values())

    # the same run with sites reading the coordinator's files directly gives the same combiner
    reference = tmp_path / "reference"
    shutil.copytree(run_dir, reference, ignore=shutil.ignore_patterns("federation"))
    for site in range(NUM_SITES):
        L.site_dir(reference, site).mkdir(parents=True)
        shutil.copy(tmp_path / f"site_{site}" / "data.npz", L.site_dir(reference, site) / "data.npz")
    direct = InProcessGrid(make_client_app(settings_of(cfg, reference)), NUM_SITES)
    _, expected = federate(direct, settings_of(cfg, reference))
    for key, value in expected.items():
        assert torch.equal(value, shipped[key]) if torch.is_tensor(value) else value == shipped[key], key


def test_an_altered_cached_file_is_detected_and_shipped_again(coordinator, tmp_path):
    cfg, run_dir = coordinator
    settings = settings_of(cfg, run_dir)
    federate(remote_sites(settings), settings)
    digest = shipping.sha256_file(run_dir / "experts.skops")
    cached = tmp_path / "site_0" / "cache" / "shared" / digest
    cached.write_bytes(cached.read_bytes() + b"\0")

    grid = remote_sites(settings)
    node = next(n for n, c in grid.contexts.items() if c.node_config[L.PARTITION_ID] == 0)
    config = ConfigRecord({"server-round": 1, **shipping.Shipment.of(settings).announcement()})
    train = Message(RecordDict({"arrays": ArrayRecord(), "config": config}), dst_node_id=node,
                    message_type=MessageType.TRAIN)
    [reply] = grid.send_and_receive([train])
    assert reply.has_error() and reply.error.code == L.SHARED_FILE_MISSING
    assert f"cached experts-path {cached} has sha256" in reply.error.reason
    assert "altered on disk" in reply.error.reason and "\n" not in reply.error.reason
    assert not cached.exists()  # removed: the next roll call ships it again

    report, _ = federate(remote_sites(settings), settings)
    assert shipping.sha256_file(cached) == digest
    assert report["failures"] == {"1": [], "2": []}


def test_a_file_altered_during_a_run_costs_one_round_then_is_shipped_again(coordinator, tmp_path):
    cfg, run_dir = coordinator
    settings = {**settings_of(cfg, run_dir), L.NUM_ROUNDS: 3}
    digest = shipping.sha256_file(run_dir / "initial_combiner.pt")
    cached = tmp_path / "site_1" / "cache" / "shared" / digest

    def alter_after_round_1(row):
        if row["round"] == 1:
            cached.write_bytes(b"not the initial combiner")

    coordinate(remote_sites(settings), settings, progress=alter_after_round_1)
    report = json.loads((L.federation_dir(run_dir) / "rounds.json").read_text())
    assert [r["sites_reporting"] for r in report["rounds"]] == [0, NUM_SITES, NUM_SITES - 1, NUM_SITES]
    [failure] = report["failures"]["2"]
    assert (failure["site"], failure["code"]) == (1, L.SHARED_FILE_MISSING)
    assert "altered on disk" in failure["reason"]
    assert shipping.sha256_file(cached) == digest


def test_a_site_copy_that_differs_from_the_announced_one_is_a_one_line_error(coordinator, tmp_path):
    cfg, run_dir = coordinator
    settings = settings_of(cfg, run_dir)
    own = tmp_path / "site_0" / "experts.skops"
    own.write_bytes((run_dir / "experts.skops").read_bytes() + b"stale")
    node_config = {L.PARTITION_ID: 0, L.LEDGER_PATH: str(tmp_path / "site_0" / "ledger.sqlite"),
                   L.EXPERTS_PATH: str(own)}
    digests = shipping.Shipment.of(settings).digests
    with pytest.raises(ValueError) as error:
        shipping.missing(settings, node_config, digests)
    assert str(error.value).startswith(f"site 0: node_config experts-path='{own}' has sha256 ")
    assert "expected the coordinator's" in str(error.value) and "\n" not in str(error.value)

    own.unlink()
    with pytest.raises(ValueError, match=r"^site 0: node_config experts-path='.*' is not a file: expected"):
        shipping.missing(settings, node_config, digests)

    shutil.copy(run_dir / "experts.skops", own)  # a matching own copy is used and not shipped
    assert shipping.missing(settings, node_config, digests) == [L.INITIAL_COMBINER_PATH]
    assert shipping.local_copy(settings, node_config, L.EXPERTS_PATH, digests[L.EXPERTS_PATH]) == own


def test_a_shipment_that_does_not_match_its_announcement_is_refused(coordinator, tmp_path):
    cfg, run_dir = coordinator
    settings = settings_of(cfg, run_dir)
    node_config = {L.PARTITION_ID: 1, L.LEDGER_PATH: str(tmp_path / "site_1" / "ledger.sqlite")}
    wrong = {L.EXPERTS_PATH: "0" * 64}
    payload = shipping.Shipment.of(settings).payload([L.EXPERTS_PATH])
    with pytest.raises(ValueError, match=r"site 1: shipped experts-path has sha256 \w+\.\.\., "
                                         r"expected 0{16}"):
        shipping.store(settings, node_config, wrong, payload)
    assert not (tmp_path / "site_1" / "cache").exists()


def test_rounds_read_the_expert_outputs_a_site_cached_and_not_the_experts(coordinator, tmp_path,
                                                                           monkeypatch):
    cfg, run_dir = coordinator
    settings = {**settings_of(cfg, run_dir), L.NUM_ROUNDS: 1}
    federate(remote_sites(settings), settings)
    outputs = list((tmp_path / "site_0" / "cache" / "outputs").iterdir())
    assert len(outputs) == 1 and np.load(outputs[0]).shape[1] == 3  # (records, experts, classes)

    def no_experts(*_):
        raise AssertionError("the experts were loaded although their outputs are cached")

    monkeypatch.setattr("fedens.federation.site.SiteRequest.experts", no_experts)
    report, _ = federate(remote_sites(settings), settings)
    assert report["failures"] == {"1": []}
    # other experts (another sha256) would get their own entry
    other = tmp_path / "other.pkl"
    other.write_bytes(b"other experts")
    X = np.zeros((2, 3))
    assert outputs_path(tmp_path, other, X) != outputs_path(tmp_path, run_dir / "experts.skops", X)


def test_the_inline_limit_is_a_run_setting(compose, tmp_path):
    cfg = compose("federation.ship_inline_bytes=0")
    L.task_schema_path(tmp_path).parent.mkdir(parents=True)
    L.task_schema_path(tmp_path).write_text('{"num_features": 64, "num_classes": 10}')
    assert federation_settings(cfg, tmp_path)[L.SHIP_INLINE_BYTES] == 0
    for name in ("experts.skops", "initial_combiner.pt"):
        (tmp_path / name).write_bytes(b"x")
    settings = {L.EXPERTS_PATH: str(tmp_path / "experts.skops"),
                L.INITIAL_COMBINER_PATH: str(tmp_path / "initial_combiner.pt"),
                L.SHIP_INLINE_BYTES: compose().federation.ship_inline_bytes}
    assert shipping.Shipment.of(settings).inline()  # the default: 4 MiB
    assert not shipping.Shipment.of({**settings, L.SHIP_INLINE_BYTES: 0}).inline()
    with pytest.raises(ConfigError, match="invalid federation.ship_inline_bytes=-1"):
        validate(compose("federation.ship_inline_bytes=-1"))
