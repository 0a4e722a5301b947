"""The site's train handler, called directly (no Ray): state across rounds, budget refusals."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedens.combiners import GatedEnsemble
from fedens.data import load_task
from fedens.experts import save_experts, train_expert_network
from fedens.federation import layout as L
from fedens.federation.ensemble.site_training import train_site
from fedens.privacy import PrivacyLedger, calibrate_dpsgd_noise, dpsgd_event, epsilon_from_events
from fedens.privacy.dpsgd import sample_rate_for


@pytest.fixture
def site_files(tmp_path):
    task = load_task("digits", 0.3, 0.25, seed=0)
    experts = train_expert_network(task.public, 10, 3, ["logreg", "naive_bayes"], 3, 1.0, 0.05, 0)
    save_experts(experts, tmp_path / "experts.skops")
    initial = GatedEnsemble.with_public_projection(task.public.X, num_experts=3, dim=8)
    torch.save(initial.state_dict(), tmp_path / "initial_combiner.pt")
    site = L.site_dir(tmp_path, 0)
    site.mkdir(parents=True)
    np.savez(site / "data.npz", X=task.private.X[:70], y=task.private.y[:70])
    return tmp_path


def settings(run_dir, rounds=3, target=4.0, budget=4.0):
    return {L.RUN_DIR: str(run_dir), L.EXPERTS_PATH: str(run_dir / "experts.skops"),
            L.INITIAL_COMBINER_PATH: str(run_dir / "initial_combiner.pt"),
            L.NUM_ROUNDS: rounds, L.LOCAL_EPOCHS: 1, L.BATCH_SIZE: 16, L.LEARNING_RATE: 0.05,
            L.TARGET_EPSILON: target, L.BUDGET_EPSILON: budget, L.DELTA: 1e-5,
            L.MAX_GRAD_NORM: 1.0, L.SEED: 0,
            L.TASK_SCHEMA: json.dumps({"num_features": 64, "num_classes": 10}), L.INJECT_FAULTS: "",
            L.HOLDOUT: 0.0, L.ATTACK_KIND: "none", L.ATTACK_SITES: "", L.ATTACK_SCALE: 1.0,
            L.SITE_NODES: ""}


def initial_trainable(run_dir):
    return GatedEnsemble.from_state_dict(torch.load(run_dir / "initial_combiner.pt")).trainable_state()


def train_message(state, server_round):
    content = RecordDict({"arrays": ArrayRecord(state),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_site_keeps_one_accountant_across_rounds_and_spends_its_target(site_files):
    context = Context(run_id=1, node_id=1, node_config={L.PARTITION_ID: 0}, state=RecordDict(),
                      run_config={})
    state = initial_trainable(site_files)
    epsilons = []
    for r in (1, 2, 3):
        reply = train_site(train_message(state, r), context, settings(site_files))
        assert not reply.has_error(), reply.error
        state = reply.content["arrays"].to_torch_state_dict()
        epsilons.append(reply.content["metrics"]["epsilon"])
    # epsilon grows each round and ends at (just under) the target
    assert epsilons[0] < epsilons[1] < epsilons[2] <= 4.0
    assert epsilons[2] > 0.99 * 4.0
    # independently: calibrate and account the same schedule with dp-accounting
    q = sample_rate_for(70, 16)
    steps = round(1 / q)
    sigma = calibrate_dpsgd_noise(4.0, 1e-5, q, 3 * steps)
    assert reply.content["metrics"]["noise-multiplier"] == pytest.approx(sigma)
    assert epsilons[2] == pytest.approx(epsilon_from_events([dpsgd_event(sigma, q, 3 * steps)], 1e-5))
    # Opacus' accountant saw all three rounds (history rebuilt from the site's ledger)
    assert reply.content["metrics"]["opacus-epsilon"] == pytest.approx(epsilons[2], rel=0.01)
    # only trained parameters and metrics leave the site
    assert set(reply.content) == {"arrays", "metrics"}
    assert set(state) == {"router.weight", "router.bias", "weights.weight"}
    assert not torch.equal(state["router.weight"], initial_trainable(site_files)["router.weight"])


def test_site_refuses_a_round_its_budget_cannot_pay_for(site_files):
    context = Context(run_id=1, node_id=1, node_config={L.PARTITION_ID: 0}, state=RecordDict(),
                      run_config={})
    state = initial_trainable(site_files)
    # a budget between what two and three of the calibrated rounds cost
    q = sample_rate_for(70, 16)
    sigma = calibrate_dpsgd_noise(4.0, 1e-5, q, 3 * round(1 / q))
    two_rounds = epsilon_from_events([dpsgd_event(sigma, q, 2 * round(1 / q))], 1e-5)
    budget = (two_rounds + 4.0) / 2
    s = settings(site_files, rounds=3, target=4.0, budget=budget)
    replies = [train_site(train_message(state, r), context, s) for r in (1, 2, 3)]
    assert [m.has_error() for m in replies] == [False, False, True]
    assert f"budget {budget:g}" in replies[2].error.reason
    ledger = PrivacyLedger.read(L.site_dir(site_files, 0) / "ledger.sqlite")
    assert len(ledger.events()) == 2 and ledger.refusals() == 1
    assert ledger.epsilon() == pytest.approx(two_rounds) and ledger.epsilon() <= budget


def test_budget_from_node_config_overrides_the_run_default(site_files):
    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={L.PARTITION_ID: 0, L.BUDGET_EPSILON: 0.5})
    reply = train_site(train_message(initial_trainable(site_files), 1), context,
                       settings(site_files))
    assert reply.has_error() and "budget 0.5" in reply.error.reason


def test_a_site_can_switch_its_contribution_off(site_files):
    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={L.PARTITION_ID: 0, L.CONTRIBUTE: "false"})
    reply = train_site(train_message(initial_trainable(site_files), 1), context,
                       settings(site_files))
    assert reply.has_error() and "switched its contribution off" in reply.error.reason
    assert not (L.site_dir(site_files, 0) / "ledger.sqlite").exists()  # nothing read, nothing spent


def new_run_context():
    """The site in a new run: fresh Flower state, the same ledger on its disk."""
    return Context(run_id=2, node_id=1, node_config={L.PARTITION_ID: 0}, state=RecordDict(), run_config={})


def independent_epsilon(events):
    """epsilon of ``events`` with dp-accounting alone (RDP)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    for event in events:
        accountant.compose(dp_accounting.DpEvent.from_named_tuple(event.to_named_tuple()))
    return accountant.get_epsilon(1e-5)


def test_a_rerun_with_other_noise_is_a_new_release_and_is_charged(site_files):
    """The hole a re-run went through: same site, round, seed and received parameters, but
    another number of rounds, hence another noise multiplier. It is another output, charged."""
    state = initial_trainable(site_files)
    first = train_site(train_message(state, 1), new_run_context(), settings(site_files, rounds=10, budget=8))
    second = train_site(train_message(state, 1), new_run_context(), settings(site_files, rounds=2, budget=8))
    sigmas = [m.content["metrics"]["noise-multiplier"] for m in (first, second)]
    assert sigmas[0] > sigmas[1]  # fewer rounds planned: less noise per round
    ledger = PrivacyLedger.read(L.site_dir(site_files, 0) / "ledger.sqlite")
    q, steps = sample_rate_for(70, 16), round(1 / sample_rate_for(70, 16))
    released = [dpsgd_event(sigma, q, steps) for sigma in sigmas]
    assert len(ledger.events()) == 2
    assert ledger.epsilon() == pytest.approx(independent_epsilon(released), rel=1e-12)
    assert second.content["metrics"]["epsilon"] == ledger.epsilon()
    # the very same release again (a resumed round) is recognised and costs nothing
    again = train_site(train_message(state, 1), new_run_context(), settings(site_files, rounds=2, budget=8))
    assert not again.has_error() and again.content["metrics"]["epsilon"] == ledger.epsilon()
    ledger.close()
    ledger = PrivacyLedger.read(L.site_dir(site_files, 0) / "ledger.sqlite")
    assert len(ledger.events()) == 2
    ledger.close()


@pytest.mark.parametrize("change", ["records", "learning_rate", "received", "clip"])
def test_anything_that_changes_the_update_changes_its_release_key(site_files, change):
    s = settings(site_files, budget=8)
    state = initial_trainable(site_files)
    train_site(train_message(state, 1), new_run_context(), s)
    if change == "records":
        with np.load(L.site_dir(site_files, 0) / "data.npz") as data:
            X, y = data["X"].copy(), data["y"]
        X[0, 0] += 1.0
        np.savez(L.site_dir(site_files, 0) / "data.npz", X=X, y=y)
    elif change == "learning_rate":
        s = {**s, L.LEARNING_RATE: 0.01}
    elif change == "received":
        state = {k: v + 0.01 for k, v in state.items()}
    else:
        s = {**s, L.MAX_GRAD_NORM: 0.5}
    train_site(train_message(state, 1), new_run_context(), s)
    ledger = PrivacyLedger.read(L.site_dir(site_files, 0) / "ledger.sqlite")
    assert len(ledger.events()) == 2, change
    ledger.close()


def test_the_same_inputs_giving_another_output_are_charged_as_a_new_release(site_files, monkeypatch):
    """Whatever makes an output differ under the same key (another BLAS kernel, say), the site
    compares it with the output it recorded and charges it as the new release it is."""
    from fedens.federation.ensemble import site_training

    state, s = initial_trainable(site_files), settings(site_files, budget=8)
    first = train_site(train_message(state, 1), new_run_context(), s)
    monkeypatch.setattr(site_training, "training_seed", lambda *args: 12345)  # other batches and noise
    second = train_site(train_message(state, 1), new_run_context(), s)
    assert not second.has_error()
    assert not np.array_equal(first.content["arrays"]["router.weight"].numpy(),
                              second.content["arrays"]["router.weight"].numpy())
    ledger = PrivacyLedger.read(L.site_dir(site_files, 0) / "ledger.sqlite")
    keys = [r["release_key"] for r in ledger.records()]
    assert len(keys) == 2 and keys[1].startswith(keys[0] + "/output-")
    sigma = first.content["metrics"]["noise-multiplier"]
    q = sample_rate_for(70, 16)
    assert ledger.epsilon() == pytest.approx(independent_epsilon([dpsgd_event(sigma, q, round(1 / q))] * 2))
    ledger.close()


@pytest.mark.parametrize("damage, named", [
    ("label_10", "column 'y' has label 10 (row 3): expected integer labels in [0, 9]"),
    ("label_-1", "column 'y' has label -1 (row 3): expected integer labels in [0, 9]"),
    ("nan_feature", "column 'X' has a non-finite value (row 3)"),
    ("width", "column 'X' has shape (70, 63): expected (records, 64) features"),
    ("no_labels", "has no column 'y'"),
])
def test_a_site_checks_its_records_before_it_spends_anything(site_files, damage, named):
    path = L.site_dir(site_files, 0) / "data.npz"
    with np.load(path) as data:
        X, y = data["X"].copy(), data["y"].copy()
    columns = {"X": X, "y": y}
    if damage.startswith("label"):
        y[3] = int(damage.split("_")[1])
    elif damage == "nan_feature":
        X[3, 5] = np.nan
    elif damage == "width":
        columns["X"] = X[:, :63]
    else:
        del columns["y"]
    np.savez(path, **columns)
    reply = train_site(train_message(initial_trainable(site_files), 1), new_run_context(),
                       settings(site_files))
    assert reply.has_error() and reply.error.code == L.DATA_INVALID
    assert reply.error.reason.startswith("site 0: data.npz ") and named in reply.error.reason
    assert "\n" not in reply.error.reason
    assert not (L.site_dir(site_files, 0) / "ledger.sqlite").exists()  # nothing charged


def test_the_coordinator_runs_blas_on_one_thread_and_restores_it(tmp_path):
    """A fork while a multi-threaded OpenBLAS call runs in the ServerApp's thread can hang that
    call; the coordinator keeps BLAS on one thread (fedens.federation.grid.single_threaded_blas)."""
    from flwr.app import Context, RecordDict
    from threadpoolctl import threadpool_info

    from fedens.federation import layout as L
    from fedens.federation.grid import coordinator_app

    def blas_threads():
        return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    before, seen = blas_threads(), {}
    app = coordinator_app(lambda grid, settings, progress: seen.update(blas_threads()),
                          {L.RUN_DIR: str(tmp_path)})
    app(None, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    assert seen and set(seen.values()) == {1}
    assert blas_threads() == before


HEAVY = ("torch", "opacus", "dp_accounting", "scipy", "sklearn", "datasets")
ROLL_CALL_PROCESS = r'''
import json, sys
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedens.federation import layout as L
from fedens.federation.ensemble.client import client_app

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # as a ServerApp would
node_config, settings = json.loads(sys.argv[1]), json.loads(sys.argv[2])
context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=settings)
reply = client_app(Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type=L.ROLL_CALL),
                   context)
loaded = lambda: sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[3].split(",")))
said = {"site": int(reply.content["metrics"]["site"]), "roll call": loaded()}
import fedens.federation.ensemble.site_training  # what a train message loads
print(json.dumps({**said, "train": loaded()}))
'''


def test_a_roll_call_process_loads_no_training_accounting_or_data_library(site_files):
    """On the Deployment Engine every message starts a ClientApp process: one that answers a roll
    call imports none of torch, Opacus, dp-accounting, SciPy, scikit-learn or datasets (it used to
    import them all: 7 s and 470 MB before it could say which site it is)."""
    import subprocess
    import sys

    node_config = {L.PARTITION_ID: 2, L.DATA_PATH: str(site_files / "data.npz"),
                   L.LEDGER_PATH: str(site_files / "ledger.sqlite")}
    done = subprocess.run([sys.executable, "-c", ROLL_CALL_PROCESS, json.dumps(node_config),
                           json.dumps(settings(site_files)), ",".join(HEAVY)],
                          capture_output=True, text=True, check=True)
    said = json.loads(done.stdout.splitlines()[-1])
    assert said["site"] == 2 and said["roll call"] == []
    assert {"torch", "opacus", "dp_accounting"} <= set(said["train"])  # the check sees what is loaded
