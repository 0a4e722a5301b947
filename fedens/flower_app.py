"""The Flower App that ``flwr run`` ships (pyproject's ``[tool.flwr.app.components]``): the
quickstart pipeline's ServerApp, and its ClientApp from
:mod:`fedens.federation.ensemble.client` (a module of its own, so that a site's ClientApp
process imports no coordinator code).

``fedens run federation=deployment`` submits the app with a prepared run directory in its run
config (``--run-config``). ``flwr run .`` alone names none: the ServerApp then runs
``fedens run`` itself, with the Hydra overrides in the run config's ``overrides`` and as many
sites as the run has nodes, on this run's grid. That is for Flower's local simulation, where the
sites read what the coordinator prepared on the same machine; its results go to
``outputs/<experiment>/<time>/`` in the SuperLink's working folder, as ``fedens run`` writes them.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from fedens.federation import layout as L
from fedens.federation.ensemble.client import client_app
from fedens.federation.ensemble.server import make_server_app

NODES_TIMEOUT_S = 60.0  # how long the ServerApp waits for the run's nodes to connect


def print_round(row: dict[str, Any]) -> None:
    """One line per round; the SuperLink streams the ServerApp's output to ``flwr run --stream``."""
    print(f"fedens round {row['round']}/{row['num_rounds']}  router {row['router_accuracy']:.3f}  "
          f"weights {row['weights_accuracy']:.3f}  sites {row['sites_reporting']}  "
          f"ε_max {row['epsilon_max']:.2f}", flush=True)
    for failure in row.get("failures", []):
        print(f"fedens   site {failure.get('site')} failed ({failure.get('kind')}): {failure.get('reason')}",
              flush=True)


def connected_nodes(grid: Any, timeout: float = NODES_TIMEOUT_S) -> list[int]:
    """The run's node ids once they are all connected (none new for a second)."""
    deadline, nodes = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        now = sorted(grid.get_node_ids())
        if now and now == nodes:
            return nodes
        nodes = now
        time.sleep(1.0)
    if not nodes:
        raise RuntimeError(f"no node connected within {timeout:g} s: start the SuperNodes, or use "
                           "Flower's local simulation (flwr run . with the default local SuperLink)")
    return nodes


def run_unprepared(grid: Any, context: Any) -> None:
    """``fedens run <overrides>`` on this run's nodes, its federation on ``grid``."""
    import fedens
    from fedens.federation.grid import single_threaded_blas
    from fedens.runs.backends import on_grid

    overrides = shlex.split(str(context.run_config.get(L.OVERRIDES, "")))
    nodes = connected_nodes(grid)
    cfg = fedens.compose([f"federation.num_sites={len(nodes)}", *overrides])
    if cfg.pipeline != "ensemble":
        raise ValueError(f"experiment {cfg.name!r} runs the {cfg.pipeline} pipeline, whose apps this Flower "
                         "App does not ship: run it with fedens run")
    if cfg.federation.num_sites != len(nodes):
        raise ValueError(f"overrides set federation.num_sites={cfg.federation.num_sites}, but the run has "
                         f"{len(nodes)} nodes: leave it out (flwr run . takes one site per node)")
    run_dir = Path("outputs") / cfg.name / time.strftime("%Y-%m-%d_%H-%M-%S")
    print(f"fedens  no run directory given: running {cfg.name} on the run's {len(nodes)} nodes into "
          f"{run_dir.resolve()}", flush=True)
    with on_grid(grid, context), single_threaded_blas():
        fedens.run(cfg, run_dir=run_dir)


server_app = make_server_app(progress=print_round, unprepared=run_unprepared)

__all__ = ["server_app", "client_app"]
