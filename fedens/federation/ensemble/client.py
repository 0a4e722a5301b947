"""The site's ClientApp: what each message the coordinator sends runs at the site.

A site reads only its own files: its private data (``data-path``), its privacy
ledger (``ledger-path``) and its copies of the shared experts and initial combiner,
which the coordinator ships (:mod:`fedens.federation.shipping`). What it replies is
parameters, noised aggregates and metrics, never records.

On the Deployment Engine each message starts a ClientApp process that imports this
module, so it imports only what a roll call needs; each handler imports its own work
(DP-SGD: torch, Opacus; experts: scikit-learn) when its message comes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedens.federation import shipping, site_dp
from fedens.federation.outbox import record_outgoing


def make_client_app(settings: Mapping[str, Any] | None = None) -> ClientApp:
    """The site's ClientApp; ``settings`` are defaults that ``run_config`` overrides."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    defaults = dict(settings or {})
    app = ClientApp(mods=[record_outgoing, site_dp.site_dp_mod])  # the outbox sees what leaves

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from fedens.federation.ensemble.site_training import train_site  # torch, Opacus

        return train_site(msg, context, defaults)

    @app.evaluate()
    def personalize(msg: Message, context: Context) -> Message:
        from fedens.federation.ensemble.personalization import personalize_site  # loads the experts

        return personalize_site(msg, context, defaults)

    @app.query("site")
    def roll_call(msg: Message, context: Context) -> Message:
        return shipping.answer_roll_call(msg, context, defaults)

    @app.query("ship")  # shipping.SHIP: the shared files the site lacks
    def receive_shared_files(msg: Message, context: Context) -> Message:
        return shipping.receive(msg, context, defaults)

    @app.query("cascade")  # L.CASCADE_HISTOGRAMS: the cascade's DP calibration statistics
    def cascade_histograms(msg: Message, context: Context) -> Message:
        from fedens.federation.ensemble.histograms import answer_histograms

        return answer_histograms(msg, context, defaults)

    return app


client_app = make_client_app()  # pyproject's [tool.flwr.app.components] clientapp
