"""An in-process stand-in for Flower's Grid: the real ClientApp and ServerApp code,
called directly (no Ray, no network), so round logic is tested fast and exactly."""

from __future__ import annotations

from flwr.app import Context, Error, Message, RecordDict

from fedens.federation import layout as L


class InProcessGrid:
    """Delivers each message to the ClientApp of its node, in this process.

    ``crash_at_round``: after the sites have handled that round's training
    messages, raise :class:`CoordinatorCrash` instead of returning the replies,
    as if the coordinator died mid-round (the sites have already released).
    """

    def __init__(self, client_app, num_sites: int, crash_at_round: int | None = None):
        self.client_app = client_app
        self.contexts = {
            1000 + 7 * site: Context(run_id=1, node_id=1000 + 7 * site, state=RecordDict(), run_config={},
                                     node_config={L.PARTITION_ID: site})
            for site in reversed(range(num_sites))  # node order != site order
        }
        self.crash_at_round = crash_at_round

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            try:
                reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as error:  # as Flower does: an exception becomes an error reply
                reply = Message(Error(code=2, reason=f"Message: {error}"), reply_to=msg)
            replies.append(reply)
        rounds = {int(m.content["config"]["server-round"]) for m in messages
                  if m.metadata.message_type == "train"}
        if self.crash_at_round in rounds:
            raise CoordinatorCrash(self.crash_at_round)
        return replies


class CoordinatorCrash(RuntimeError):
    pass


def run_in_process(cfg, settings, apps, progress, echo):
    """A federation backend (``fedens.runs.backends``) for tests: the pipeline's real ServerApp and
    ClientApps, the sites called in this process through :class:`InProcessGrid`, no Ray. As under
    Flower's engines, a ServerApp that raises is logged, not raised (the frame then reports it)."""
    import logging

    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # as a ServerApp's task
    grid = InProcessGrid(apps.client(settings), cfg.federation.num_sites)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    try:
        apps.server(settings, progress)(grid, context)
    except Exception as error:  # noqa: BLE001  (what Flower does with a ServerApp's exception)
        logging.getLogger(__name__).error("ServerApp raised: %s", error)
