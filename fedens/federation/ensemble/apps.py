"""The ServerApp ``flwr run`` ships to a SuperLink: pyproject's ``[tool.flwr.app.components]``
(its ClientApp is :mod:`fedens.federation.ensemble.client`'s ``client_app``, in a module of its
own so that a site's ClientApp process imports no coordinator code).

Run settings come from ``context.run_config`` (``[tool.flwr.app.config]`` and the
``--run-config`` that ``fedens run federation=deployment`` passes), a site's own
paths and budget from its SuperNode's ``--node-config``.
"""

from __future__ import annotations

from typing import Any

from fedens.federation.ensemble.server import make_server_app


def print_round(row: dict[str, Any]) -> None:
    """One line per round; the SuperLink streams the ServerApp's output to ``flwr run --stream``."""
    print(f"fedens round {row['round']}/{row['num_rounds']}  router {row['router_accuracy']:.3f}  "
          f"weights {row['weights_accuracy']:.3f}  sites {row['sites_reporting']}  "
          f"ε_max {row['epsilon_max']:.2f}", flush=True)
    for failure in row.get("failures", []):
        print(f"fedens   site {failure.get('site')} failed ({failure.get('kind')}): {failure.get('reason')}",
              flush=True)


server_app = make_server_app(progress=print_round)
