"""The site side of every message, written once: settings, paths, opt-out, shared files, the
site's validated records, its ledger, and the refusals a site sends instead of raising.

A handler is a function of one :class:`SiteRequest`; :func:`site_handler` turns it into a
Flower message handler. What a site refuses becomes an error reply with a code the
coordinator counts (:mod:`fedens.federation.layout`): a budget it cannot pay
(``BUDGET_REFUSED``), a switched-off contribution (``OPTED_OUT``), a shared file it must be
shipped (``SHARED_FILE_MISSING``), records that do not fit the task (``DATA_INVALID``).
Records are checked before anything is charged, so a site with bad data spends nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Context, Error, Message, RecordDict

from fedens.data.rows import ExpertInputs, features, from_npz
from fedens.data.schema import DataSchemaError, TaskSchema
from fedens.federation import layout as L
from fedens.federation import shipping
from fedens.federation.outputs_cache import cached_expert_outputs
from fedens.privacy.errors import BudgetExceeded

if TYPE_CHECKING:
    from fedens.privacy import PrivacyLedger

Records = tuple[ExpertInputs, np.ndarray]  # (the experts' inputs: features [with text], labels)


class OptedOut(RuntimeError):
    """The site has switched its contribution off."""


class EndpointRefused(RuntimeError):
    """An expert would send the site's records to an endpoint the site has not allowed."""


#: what a site refuses, and the error code its reply carries
REFUSALS: dict[type[Exception], int] = {
    BudgetExceeded: L.BUDGET_REFUSED,
    OptedOut: L.OPTED_OUT,
    shipping.SharedFileMissing: L.SHARED_FILE_MISSING,
    DataSchemaError: L.DATA_INVALID,
    EndpointRefused: L.ENDPOINT_REFUSED,
}


def task_fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The task's schema as the run settings carry it (``task-schema``, JSON)."""
    text = str(settings.get(L.TASK_SCHEMA) or "")
    if not text:
        raise DataSchemaError(f"the run config has no {L.TASK_SCHEMA!r}: expected the coordinator to "
                              "name the task's features and classes")
    return json.loads(text)


def split_holdout(n: int, fraction: float, seed: int, site: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held back): a seeded ``fraction`` held back when the site has
    at least 5 records, else nothing."""
    order = np.random.default_rng([seed, site, 7919]).permutation(n)
    held = int(round(fraction * n)) if fraction > 0 and n >= 5 else 0
    return np.sort(order[held:]), np.sort(order[:held])


@dataclass
class SiteRequest:
    """One message at one site: what every handler needs, resolved once."""

    msg: Message
    context: Context  # its node_config names the site's verified copies of the shared files
    settings: dict[str, Any]  # the run settings: the app's defaults overridden by run_config
    site: int
    data_path: Path
    ledger_path: Path

    @property
    def node_config(self) -> Mapping[str, Any]:
        return self.context.node_config

    @property
    def folder(self) -> Path:
        """The site's own folder (its ledger's), where it keeps what never leaves it."""
        return self.ledger_path.parent

    def all_records(self) -> Records:
        """All of the site's records ``(X, y)``, checked against the task's schema: an ``.npz``
        of arrays ``X`` and ``y``, or, for a task from a table, a table of the site's own
        (fedens.data.tables) read and encoded as the coordinator's schema says."""
        fields = task_fields(self.settings)
        schema = TaskSchema(int(fields["num_features"]), int(fields["num_classes"]))
        if fields.get("table") and self.data_path.suffix.lower() != ".npz":
            from fedens.data.tables import read_site_table

            try:
                inputs, y = read_site_table(self.data_path, fields["table"])
            except DataSchemaError as error:
                raise DataSchemaError(f"site {self.site}: {error}") from None
            schema.check(features(inputs), y, where=f"site {self.site}: {self.data_path.name}")
            return inputs, y
        with np.load(self.data_path) as data:
            if missing := [c for c in ("X", "y") if c not in data.files]:
                raise DataSchemaError(f"site {self.site}: {self.data_path.name} has no column "
                                      f"{missing[0]!r}: expected columns 'X' (features) and 'y' (labels)")
            inputs, y = from_npz(data), data["y"]
        schema.check(features(inputs), y, where=f"site {self.site}: {self.data_path.name}")
        return inputs, (y if np.issubdtype(y.dtype, np.integer) else y.astype(np.int64))

    def records(self) -> tuple[Records, Records]:
        """``((inputs, y) to train on, (inputs, y) held back)``, checked against the task's schema."""
        X, y = self.all_records()
        train, held = split_holdout(len(y), float(self.settings[L.HOLDOUT]),
                                    int(self.settings[L.SEED]), self.site)
        return (X[train], y[train]), (X[held], y[held])

    def shared_file(self, key: str) -> Path:
        """The site's verified copy of a shared file (``L.EXPERTS_PATH``, ``L.INITIAL_COMBINER_PATH``)."""
        return L.shared_file(self.settings, self.node_config, key)

    def experts(self) -> list:
        """The network's shared experts; EndpointRefused if one would send the site's records to
        an endpoint its node_config does not allow (checked before any expert is called)."""
        from fedens.experts import load_experts  # sklearn & co.: only when a site calls its experts

        experts = load_experts(self.shared_file(L.EXPERTS_PATH))
        allowed = L.allowed_endpoints(self.settings, self.node_config)
        for expert in experts:
            url = expert.sends_records_to() if hasattr(expert, "sends_records_to") else None
            if url and "*" not in allowed and url.rstrip("/") not in allowed:
                raise EndpointRefused(f"site {self.site}: expert {expert.name!r} would send the site's "
                                      f"records to {url}, which it has not allowed: set node_config "
                                      f"{L.ALLOW_ENDPOINTS}=\"{url}\" to allow it (simulation: "
                                      f"federation.allow_endpoints=[{url}])")
        return experts

    def initial_combiner(self) -> Any:
        """The combiner before training, of the kind its file is tagged with."""
        from fedens.combiners import load_combiner

        return load_combiner(self.shared_file(L.INITIAL_COMBINER_PATH))

    def expert_outputs(self, inputs: ExpertInputs) -> np.ndarray:
        """The shared experts' outputs ``(n, K, C)`` on the site's records ``inputs``, from its own
        cache when there (then neither the experts nor their libraries are loaded)."""
        return cached_expert_outputs(self.folder, self.shared_file(L.EXPERTS_PATH), inputs, self.experts)

    @contextmanager
    def ledger(self) -> Iterator[PrivacyLedger]:
        """The site's ledger, with the budget from its node_config (else the run's default)."""
        ledger = L.open_site_ledger(self.settings, self.node_config)
        try:
            yield ledger
        finally:
            ledger.close()

    def reply(self, **records: Any) -> Message:
        return Message(RecordDict(records), reply_to=self.msg)


SiteHandler = Callable[[SiteRequest], Message]
MessageHandler = Callable[[Message, Context, Mapping[str, Any]], Message]


def site_handler(handler: SiteHandler | None = None, *, contributes: bool = True) -> Any:
    """Decorator: ``handler(request)`` as a message handler ``(msg, context, defaults)`` behind the
    site preamble. ``contributes``: the message asks the site to take part in a release, which a
    site that switched its contribution off refuses.

    Examples
    --------
    >>> @site_handler(contributes=False)
    ... def which_site(request: SiteRequest) -> Message:
    ...     return request.reply()
    """
    if handler is None:
        return lambda fn: site_handler(fn, contributes=contributes)

    def handle(msg: Message, context: Context, defaults: Mapping[str, Any]) -> Message:
        try:
            context = shipping.with_local_copies(msg, context, defaults)
            settings = L.run_settings(defaults, context)
            site, data_path, ledger_path = L.site_paths(settings, context.node_config)
            if contributes and not L.contributes(context.node_config):
                raise OptedOut(L.opted_out_reason(site))
            return handler(SiteRequest(msg, context, settings, site, data_path, ledger_path))
        except tuple(REFUSALS) as refusal:
            code = next(c for kind, c in REFUSALS.items() if isinstance(refusal, kind))
            return Message(Error(code=code, reason=str(refusal)), reply_to=msg)

    return functools.wraps(handler)(handle)
