"""The Expert protocol, the scikit-learn adapter and stacking of expert outputs."""

from __future__ import annotations

import copy
import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedens.data.rows import ExpertInputs, features
from fedens.experts.registry import EXPERTS, register_expert
from fedens.experts.validation import check_cost, check_num_classes, check_probabilities, task_class_columns
from fedens.files import reproducible_zip, sha256_bytes, write_atomic


@runtime_checkable
class Expert(Protocol):
    """Maps ``n`` inputs to probabilities of shape (n, C); rows sum to one.

    Inputs are whatever the adapter takes: an array (n, d) for tabular models,
    a sequence of :class:`~fedens.experts.MultipleChoiceQuestion` for language
    models. Metadata: ``name``, ``cost`` (> 0, per call on one input) and
    ``site``, the owning site's id, or ``None`` for a shared expert.
    """

    name: str
    cost: float
    site: str | None

    def predict_proba(self, X: Any) -> np.ndarray: ...


@register_expert("sklearn")
@dataclass
class SklearnExpert:
    """A fitted scikit-learn classifier as an expert over ``num_classes`` classes.

    Columns are aligned to the task's label set: classes the estimator never saw
    get probability zero.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.naive_bayes import GaussianNB
    >>> X = np.eye(3, dtype=np.float32); y = np.array([0, 2, 2])
    >>> SklearnExpert(GaussianNB().fit(X, y), num_classes=4, name="nb").predict_proba(X).shape
    (3, 4)
    """

    estimator: Any
    num_classes: int
    name: str
    family: str = "sklearn"
    cost: float = 1.0
    site: str | None = None
    # An estimator fitted on a table's own columns (fedens.data.tables): the table schema that
    # decodes the task's encoded features back into those columns, and the task's label names,
    # which the estimator's classes_ are.
    table: dict[str, Any] | None = None
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.num_classes = check_num_classes(self.num_classes, self.name)
        self.cost = check_cost(self.cost, self.name)

    @property
    def reads_text(self) -> bool:
        """An estimator on the table's own columns takes its text columns raw."""
        return self.table is not None

    def class_columns(self) -> np.ndarray:
        """The task's class number of each of the estimator's ``classes_``."""
        classes = list(self.estimator.classes_)
        return task_class_columns(classes, self.label_names, self.num_classes, self.name)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        inputs = X if self.table is None else decoded_table(X, self.table)
        raw = np.asarray(self.estimator.predict_proba(inputs), dtype=np.float64)
        out = np.zeros((len(X), self.num_classes))
        out[:, self.class_columns()] = raw
        return check_probabilities(out / out.sum(axis=1, keepdims=True), self.name, len(X), self.num_classes)

    def to_record(self) -> dict[str, Any]:
        """What the experts file holds for this expert (skops writes the fitted estimator)."""
        return {"name": self.name, "family": self.family, "cost": float(self.cost), "site": self.site,
                "num_classes": int(self.num_classes), "estimator": self.estimator, "table": self.table,
                "label_names": list(self.label_names) if self.label_names else None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SklearnExpert:
        return cls(record["estimator"], record["num_classes"], name=record["name"], family=record["family"],
                   cost=record["cost"], site=record["site"], table=record.get("table"),
                   label_names=tuple(record["label_names"]) if record.get("label_names") else None)


def decoded_table(inputs: ExpertInputs, table: dict[str, Any]) -> Any:
    """The task's encoded features as the table's own columns (a pandas DataFrame), by the
    schema :func:`fedens.data.tables.table_schema` gives: numbers de-standardised (to float32
    precision), one-hot blocks back to their category (one the public part lacks: None), text
    columns as the raw text ``inputs`` carries (:class:`fedens.data.rows.TextRows`)."""
    import pandas as pd

    X, text, columns, at = features(inputs), getattr(inputs, "text", {}), {}, 0
    for name in table["features"]:
        if name in table.get("text", {}):
            if name not in text:
                raise ValueError(f"text column {name!r} is missing from the inputs: expected the task's "
                                 "text columns beside its features")
            columns[name] = np.asarray(text[name], dtype=object)
            at += len(table["text"][name]["words"])
        elif name in table["numeric"]:
            mean, std = table["numeric"][name]
            columns[name] = X[:, at].astype(np.float64) * std + mean
            at += 1
        else:
            categories = table["categories"][name]
            block = X[:, at:at + len(categories)]
            chosen = np.where(block.max(axis=1) > 0.5, block.argmax(axis=1), len(categories))
            columns[name] = np.array([*categories, None], dtype=object)[chosen]
            at += len(categories)
    return pd.DataFrame(columns)


def expert_outputs(experts: Sequence[Expert], X: Any) -> np.ndarray:
    """Stack every expert's probabilities on inputs ``X`` into an array of shape (n, K, C).

    Every output is validated (shape, finite, non-negative, rows sum to 1) and
    all experts must share one class count; errors name the expert.
    """
    if not experts:
        raise ValueError("experts must be a non-empty list, got an empty one")
    outputs: list[np.ndarray] = []
    for k, expert in enumerate(experts):
        name = str(getattr(expert, "name", f"#{k}"))
        inputs = X if getattr(expert, "reads_text", False) else features(X)
        P = check_probabilities(expert.predict_proba(inputs), name, num_rows=len(X))
        if outputs and P.shape[1] != outputs[0].shape[1]:
            first = getattr(experts[0], "name", "#0")
            raise ValueError(
                f"expert {name!r} gives {P.shape[1]} classes but expert {first!r} gives "
                f"{outputs[0].shape[1]}; experts in one network must share the label set"
            )
        outputs.append(P)
    return np.stack(outputs, axis=1).astype(np.float32)


# The experts file the coordinator ships its sites is skops (scikit-learn's secure format): loading
# it builds objects of listed types and runs no code the file names. skops trusts scikit-learn's
# estimators, NumPy and SciPy; these are the parts of fitted estimators it leaves to the user,
# reviewed here: plain containers of a fitted tree's nodes, of an MLP's optimiser moments, of a
# nearest-neighbour index and its distance.
EXPERTS_FORMAT = "fedens-experts/2"
READ_FORMATS = (EXPERTS_FORMAT, "fedens-experts/1")  # /1: scikit-learn records without "adapter"
TRUSTED_TYPES = ("sklearn.tree._tree.Tree", "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
                 "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
                 "sklearn.neighbors._kd_tree.KDTree", "sklearn.neighbors._ball_tree.BallTree",
                 "sklearn.metrics._dist_metrics.EuclideanDistance64")


def save_experts(experts: Sequence[Expert], path: Path) -> None:
    """Write a network of scikit-learn experts as a skops file (:func:`load_experts` reads it)."""
    write_atomic(path, experts_bytes(experts))


def experts_bytes(experts: Sequence[Expert]) -> bytes:
    """A network of experts as the bytes of a skops file, the same bytes for the same network.
    Each expert is the record its adapter's ``to_record`` gives (a fitted scikit-learn estimator,
    an ONNX graph's bytes); TypeError names an expert whose adapter has none."""
    import skops.io

    records = []
    for expert in experts:
        adapter = next((name for name, cls in EXPERTS.items() if type(expert) is cls), None)
        if adapter is None or not hasattr(expert, "from_record"):
            raise TypeError(f"expert {getattr(expert, 'name', expert)!r} is a {type(expert).__name__}, which "
                            "has no code-free record: ship scikit-learn estimators or ONNX graphs")
        records.append({"adapter": adapter, **expert.to_record()})
    data = skops.io.dumps({"format": EXPERTS_FORMAT, "experts": records},
                          compression=zipfile.ZIP_DEFLATED)  # the quickstart's: 1.2 MB -> 385 KB
    return canonical_skops(data)


def canonical_skops(data: bytes) -> bytes:
    """A skops file with the same contents always in the same bytes, since its sha256 names it in
    the sites' caches and in release keys. skops names each object by its ``id()`` in the writing
    process (``"__id__"`` in ``schema.json``, ``<id>.npy`` for arrays) and zip stamps entries with
    the time: the ids become their order of first appearance (here, by hand for skops' file
    protocol, tested on 0.16), the times fixed (:func:`fedens.files.reproducible_zip`)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        schema = source.read("schema.json").decode()
        order: dict[str, str] = {}
        for found in re.finditer(r'"__id__": (\d+)|"file": "(\d+)\.npy"', schema):
            order.setdefault(found.group(1) or found.group(2), str(len(order) + 1))
        schema = re.sub(r'("__id__": )(\d+)', lambda m: m.group(1) + order[m.group(2)], schema)
        schema = re.sub(r'("file": ")(\d+)(\.npy")', lambda m: m.group(1) + order[m.group(2)] + m.group(3),
                        schema)
        arrays = {order[n.removesuffix(".npy")]: n for n in source.namelist() if n != "schema.json"}
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
            target.writestr("schema.json", schema)
            for new_id in sorted(arrays, key=int):
                target.writestr(f"{new_id}.npy", source.read(arrays[new_id]))
    return reproducible_zip(out.getvalue())


_READ: dict[tuple[str, tuple[str, ...]], Any] = {}  # what read_skops built, by the bytes' digest


def read_skops(data: bytes, allowed: set[str], *, not_skops: str, untrusted: str) -> Any:
    """What a skops file holds, built from ``allowed`` types (beyond skops' defaults) only:
    ValueError ``not_skops (why)`` for a damaged or foreign file, ``untrusted: types`` when it
    names any other type (then nothing from it is built).

    Each call gets its own copy. What was built is kept for the life of the process, by the
    sha256 of ``data`` and ``allowed``: in simulation many sites share a process and the same
    experts file, and a copy costs about 1% of skops' audited load."""
    key = (sha256_bytes(data), tuple(sorted(allowed)))
    if key not in _READ:
        import skops.io

        try:
            unknown = sorted(set(skops.io.get_untrusted_types(data=data)) - allowed)
            loaded = None if unknown else skops.io.loads(data, trusted=sorted(allowed))
        except Exception as error:  # a damaged zip, or not a skops file
            raise ValueError(f"{not_skops} ({type(error).__name__}: {error})") from None
        if unknown:
            raise ValueError(f"{untrusted}: {', '.join(unknown)}")
        if len(_READ) >= 4:
            _READ.clear()
        _READ[key] = loaded
    return copy.deepcopy(_READ[key])


def load_experts(path: Path, trusted: Iterable[str] = ()) -> list[Expert]:
    """The experts :func:`save_experts` wrote. Loading runs no code from the file; ValueError
    names the file and any type in it beyond skops' defaults, :data:`TRUSTED_TYPES` and
    ``trusted`` (the types its reader chooses to allow)."""
    saved = read_skops(Path(path).read_bytes(), {*TRUSTED_TYPES, *trusted},
                       not_skops=f"{path} is not a fedens experts file",
                       untrusted=f"{path} holds types fedens does not load unless trusted")
    if not isinstance(saved, dict) or saved.get("format") not in READ_FORMATS:
        raise ValueError(f"{path} is not a fedens experts file (expected format {EXPERTS_FORMAT!r})")
    experts = []
    for record in saved["experts"]:
        adapter = EXPERTS.get(record.pop("adapter", "sklearn"))
        if not hasattr(adapter, "from_record"):
            raise ValueError(f"{path} holds expert {record.get('name')!r} of an adapter this fedens does "
                             "not load")
        experts.append(adapter.from_record(record))
    return experts
