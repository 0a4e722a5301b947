"""What a combiner offers when the ensemble pipeline federates it: its own form of everything
the frame would otherwise decide by the combiner's name.

A federated combiner class (the torch forms of the learned pools, the router, the cascade)
declares how the federation learns it (``protocol``), its config keys (``config_schema``), how
its initial form is built from public data (:meth:`FederatedForm.initial`), how it is scored
(:meth:`FederatedForm.scores`), its central non-private reference, its results, its report
rows and its progress line. The pipeline calls these methods; it never asks for a name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from fedens.combiners.base import accuracy_and_nll
from fedens.config_schema import Schema, integer, positive

Row = tuple[str, float, Any]  # (label, accuracy, expert calls per query)
SiteRecords = tuple[np.ndarray, np.ndarray, np.ndarray]  # a site's (X, expert outputs, y)

#: the keys of every combiner that is trained by DP-SGD rounds at the sites
TRAINED_SCHEMA = Schema([
    integer("combiner.local_epochs"), integer("combiner.batch_size"), integer("combiner.central_epochs"),
    positive("combiner.lr"),
])


class FederatedForm:
    """Mixin of the combiners the ensemble pipeline can federate (see the module docstring)."""

    kind: ClassVar[str] = ""
    #: how the federation learns it: "dpsgd_rounds" (trained by DP-SGD at the sites over
    #: rounds) or "histogram_release" (calibrated from one DP release of statistics)
    protocol: ClassVar[str] = "dpsgd_rounds"
    #: whether each site fine-tunes the final global combiner on its own records
    personalizable: ClassVar[bool] = False
    #: its keys in ``conf/combiner/<kind>.yaml``
    config_schema: ClassVar[Schema] = TRAINED_SCHEMA
    #: what the console calls it
    label: ClassVar[str] = ""

    @classmethod
    def initial(cls, c: Mapping[str, Any], public: Any, experts: list, seed: int) -> Any:
        """The form every site starts from, built from public data only (``c``: the combiner config)."""
        raise NotImplementedError

    def scores(self, P: np.ndarray, X: np.ndarray, y: np.ndarray, top_k: int | None = None
               ) -> dict[str, float]:
        """Test scores by name (a row of ``metrics.csv``); here the combined distribution's."""
        accuracy, nll = accuracy_and_nll(self.combine(P, X), y)  # type: ignore[attr-defined]
        return {"accuracy": accuracy, "nll": nll}

    def central_reference(self, c: Mapping[str, Any], private: Any, P_private: np.ndarray,
                          test: Any, P_test: np.ndarray, seed: int) -> dict[str, float]:
        """A copy trained centrally, non-privately, on all private records with the code the sites
        run: its test scores, as ``central_nonprivate_*`` baselines."""
        s = self.central_scores(c, private, P_private, test, P_test, seed)
        return {"central_nonprivate_accuracy": s["accuracy"], "central_nonprivate_nll": s["nll"]}

    def central_scores(self, c: Mapping[str, Any], private: Any, P_private: np.ndarray, test: Any,
                       P_test: np.ndarray, seed: int) -> dict[str, float]:
        """:meth:`scores` on the test split of a copy trained centrally on all private records."""
        from fedens.combiners.training import train_combiner

        model = train_combiner(copy.deepcopy(self), private.X, P_private, private.y, int(c["central_epochs"]),
                               float(c["lr"]), int(c["batch_size"]), seed)
        return model.scores(P_test, test.X, test.y, c.get("top_k"))

    def federated_nonprivate(self, c: Mapping[str, Any], sites: list[SiteRecords], rounds: int,
                             seed: int) -> Any:
        """A copy trained by FedAvg over every site's records, each round's local training as at
        the sites (``local_epochs``, ``batch_size``, ``lr``) but without clipping or noise, every
        site in every round: what the private data could give at ε = ∞. Simulation only: it
        needs every site's records (``sites``: (X, expert outputs, y) per site) in one process."""
        from fedens.combiners.training import train_combiner, training_seed

        model = copy.deepcopy(self)
        sizes = np.array([len(y) for _, _, y in sites], dtype=float)
        shares = sizes / sizes.sum()
        for r in range(1, rounds + 1):
            states = []
            for k, (X, P, y) in enumerate(sites):
                local = copy.deepcopy(model)
                train_combiner(local, X, P, y, int(c["local_epochs"]), float(c["lr"]), int(c["batch_size"]),
                               training_seed(seed, k, r))
                states.append(local.trainable_state())
            model.load_trainable({name: sum(float(w) * s[name] for w, s in zip(shares, states, strict=True))
                                  for name in states[0]})
        return model

    def correct(self, P: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-query correctness (bool) of the headline prediction."""
        return self.combine(P, X).argmax(axis=1) == np.asarray(y)  # type: ignore[attr-defined]

    def results(self, final: Mapping[str, Any], num_experts: int, c: Mapping[str, Any]
                ) -> dict[str, dict[str, Any]]:
        """results.json's ``metrics`` and ``cost`` from the last round's scores."""
        calls = float(final.get("expert_calls_per_query", num_experts))
        return {"metrics": {"test_accuracy": final["accuracy"], "test_nll": final["nll"]},
                "cost": {"num_experts": num_experts, "expert_calls_per_query": calls}}

    @classmethod
    def report_rows(cls, results: Mapping[str, Any], c: Mapping[str, Any]) -> list[Row]:
        """The console table's rows for this combiner, federated and central."""
        m, b, cost = results["metrics"], results["baselines"], results["cost"]
        K = cost["num_experts"]
        return [(f"{cls.kind} (federated, DP)", m["test_accuracy"], f"{cost['expert_calls_per_query']:.2f}"),
                (f"{cls.kind} (public only, ε = 0)", b["public_only_accuracy"],
                 f"{b.get('public_only_expert_calls_per_query', K):.2f}"),
                (f"{cls.kind} (federated, no DP)", b["federated_nonprivate_accuracy"],
                 f"{b.get('federated_nonprivate_expert_calls_per_query', K):.2f}"),
                (f"{cls.kind} (central, non-private)", b["central_nonprivate_accuracy"],
                 f"{b.get('central_nonprivate_expert_calls_per_query', K):.2f}")]

    @classmethod
    def plot_series(cls, c: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """Per-round curves for the accuracy plot: (row key, label, line style)."""
        return [("accuracy", f"{cls.kind}, DP", "o-")]

    @classmethod
    def progress_line(cls, row: Mapping[str, Any], c: Mapping[str, Any]) -> str:
        """One console line for a round (round 0: the initial form, before any private record)."""
        if row["round"] == 0:
            return f"round  0/{row['num_rounds']}  {cls.kind} {row['accuracy']:.3f} (initial: uniform)"
        return (f"round {row['round']:2d}/{row['num_rounds']}  {cls.kind} {row['accuracy']:.3f} "
                f"(NLL {row['nll']:.3f})  sites {row['sites_reporting']}  "
                f"ε_max {row['epsilon_max']:.2f}  [{row['elapsed_s']:.0f} s]")
