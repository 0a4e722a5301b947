"""The site's train handler, called directly (no Ray): state across rounds, budget refusals."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedens.combiners import GatedEnsemble
from fedens.data import load_task
from fedens.experts import save_experts, train_expert_network
from fedens.federation import layout as L
from fedens.federation.client_app import train_site
from fedens.privacy import PrivacyLedger, calibrate_dpsgd_noise, dpsgd_event, epsilon_from_events
from fedens.privacy.dpsgd import sample_rate_for


@pytest.fixture
def site_files(tmp_path):
    task = load_task("digits", 0.3, 0.25, seed=0)
    experts = train_expert_network(task.public, 10, 3, ["logreg", "naive_bayes"], 3, 1.0, 0.05, 0)
    save_experts(experts, tmp_path / "experts.pkl")
    initial = GatedEnsemble.with_public_projection(task.public.X, num_experts=3, dim=8)
    torch.save(initial.state_dict(), tmp_path / "initial_combiner.pt")
    site = L.site_dir(tmp_path, 0)
    site.mkdir(parents=True)
    np.savez(site / "data.npz", X=task.private.X[:70], y=task.private.y[:70])
    return tmp_path


def settings(run_dir, rounds=3, target=4.0, budget=4.0):
    return {L.RUN_DIR: str(run_dir), L.EXPERTS_PATH: str(run_dir / "experts.pkl"),
            L.INITIAL_COMBINER_PATH: str(run_dir / "initial_combiner.pt"),
            L.NUM_ROUNDS: rounds, L.LOCAL_EPOCHS: 1, L.BATCH_SIZE: 16, L.LEARNING_RATE: 0.05,
            L.TARGET_EPSILON: target, L.BUDGET_EPSILON: budget, L.DELTA: 1e-5,
            L.MAX_GRAD_NORM: 1.0, L.SEED: 0}


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
    ledger = PrivacyLedger.open_existing(L.site_dir(site_files, 0) / "ledger.sqlite")
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
