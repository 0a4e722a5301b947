"""The minimal stock Flower app fedens' federation is timed against: Flower's own ``FedAvg``
(Message API) training the same router on the same sites' records, through the same Simulation
Engine, with none of fedens (no DP-SGD, no ledger, no shipped files, no reports). Also the same
local steps in a plain loop, with no Flower at all.

    python -m bench.stock_flower flower|loop WORK_DIR NUM_SITES NUM_ROUNDS

``WORK_DIR`` holds ``initial_combiner.pt`` and ``stock/site_<i>.npz`` (``X``, the experts'
outputs ``P``, ``y``), written by :mod:`bench.federation` from the quickstart's own partition.
Prints one JSON line: the final test accuracy and the seconds inside the rounds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BATCH, LR, EPOCHS = 32, 0.05, 1  # the quickstart's local training (conf/combiner/gated_ensemble.yaml)


def _model(work: Path) -> torch.nn.Module:
    from fedens.combiners import load_combiner

    return load_combiner(work / "initial_combiner.pt")


def _site(work: Path, site: int) -> tuple[torch.Tensor, ...]:
    d = np.load(work / "stock" / f"site_{site}.npz")
    return (torch.as_tensor(d["X"], dtype=torch.float32), torch.as_tensor(d["P"], dtype=torch.float32),
            torch.as_tensor(d["y"], dtype=torch.int64))


def local_training(model: torch.nn.Module, X: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> None:
    """Plain minibatch Adam on the router's loss (what a stock app would write)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(y)).split(BATCH):
            optimizer.zero_grad()
            model.loss(X[batch], P[batch], y[batch]).backward()
            optimizer.step()


def _accuracy(model: torch.nn.Module, work: Path) -> float:
    d = np.load(work / "stock" / "test.npz")
    return float((model.combine(d["P"], d["X"]).argmax(axis=1) == d["y"]).mean())


def flower(work: Path, num_sites: int, num_rounds: int) -> dict[str, Any]:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        X, P, y = _site(work, int(context.node_config["partition-id"]))
        model = _model(work)
        model.load_trainable(msg.content["arrays"].to_torch_state_dict())
        local_training(model, X, P, y)
        return Message(RecordDict({"arrays": ArrayRecord(model.trainable_state()),
                                   "metrics": MetricRecord({"num-examples": len(y)})}), reply_to=msg)

    server, out = ServerApp(), {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        model = _model(work)
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_sites,
                          min_available_nodes=num_sites)
        started, elapsed = time.monotonic(), []

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:  # as fedens, every round
            model.load_trainable(arrays.to_torch_state_dict())
            accuracy = _accuracy(model, work)
            elapsed.append(time.monotonic() - started)  # round 0 (the initial model), 1, 2, ...
            return MetricRecord({"accuracy": accuracy})

        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.trainable_state()),
                                num_rounds=num_rounds, evaluate_fn=evaluate)
        out["in_rounds_s"] = time.monotonic() - started
        out["round_elapsed_s"] = elapsed
        model.load_trainable(result.arrays.to_torch_state_dict())
        out["test_accuracy"] = _accuracy(model, work)

    run_simulation(server_app=server, client_app=client, num_supernodes=num_sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False,
                                                 "logging_level": "ERROR", "log_to_driver": False}})
    return out


def loop(work: Path, num_sites: int, num_rounds: int) -> dict[str, Any]:
    """The same local steps and the same weighted average, one process, no federation."""
    torch.set_num_threads(1)
    model = _model(work)
    sites = [_site(work, i) for i in range(num_sites)]
    started, elapsed = time.monotonic(), [0.0]
    for _ in range(num_rounds):
        states, sizes = [], []
        for X, P, y in sites:
            local = _model(work)
            local.load_trainable(model.trainable_state())
            local_training(local, X, P, y)
            states.append(local.trainable_state())
            sizes.append(len(y))
        w = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
        model.load_trainable({k: sum(wi * s[k] for wi, s in zip(w, states, strict=True)) for k in states[0]})
        elapsed.append(time.monotonic() - started)
    return {"in_rounds_s": time.monotonic() - started, "round_elapsed_s": elapsed,
            "test_accuracy": _accuracy(model, work)}


if __name__ == "__main__":
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    kind, work, sites, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps({"flower": flower, "loop": loop}[kind](work, sites, rounds)), flush=True)
