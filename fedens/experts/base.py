"""The Expert protocol, the scikit-learn adapter and stacking of expert outputs."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedens.experts.registry import register_expert
from fedens.experts.validation import check_cost, check_num_classes, check_probabilities
from fedens.files import write_atomic


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

    def __post_init__(self) -> None:
        self.num_classes = check_num_classes(self.num_classes, self.name)
        self.cost = check_cost(self.cost, self.name)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raw = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        out = np.zeros((len(X), self.num_classes))
        out[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = raw
        return check_probabilities(out / out.sum(axis=1, keepdims=True), self.name, len(X), self.num_classes)


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
        P = check_probabilities(expert.predict_proba(X), name, num_rows=len(X))
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
EXPERTS_FORMAT = "fedens-experts/1"
TRUSTED_TYPES = ("sklearn.tree._tree.Tree", "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
                 "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
                 "sklearn.neighbors._kd_tree.KDTree", "sklearn.neighbors._ball_tree.BallTree",
                 "sklearn.metrics._dist_metrics.EuclideanDistance64")


def save_experts(experts: Sequence[Expert], path: Path) -> None:
    """Write a network of scikit-learn experts as a skops file (:func:`load_experts` reads it).
    TypeError names an expert of another kind: ship those as files of their own format."""
    import skops.io

    records = []
    for expert in experts:
        if not isinstance(expert, SklearnExpert):
            raise TypeError(f"expert {getattr(expert, 'name', expert)!r} is a {type(expert).__name__}: only "
                            "SklearnExpert networks are saved as one code-free experts file")
        records.append({"name": expert.name, "family": expert.family, "cost": float(expert.cost),
                        "site": expert.site, "num_classes": int(expert.num_classes),
                        "estimator": expert.estimator})
    data = skops.io.dumps({"format": EXPERTS_FORMAT, "experts": records},
                          compression=zipfile.ZIP_DEFLATED)  # the quickstart's: 1.2 MB -> 385 KB
    write_atomic(path, canonical_skops(data))


def canonical_skops(data: bytes) -> bytes:
    """A skops file with the same contents always in the same bytes, since its sha256 names it in
    the sites' caches and in release keys. skops names each object by its ``id()`` in the writing
    process (``"__id__"`` in ``schema.json``, ``<id>.npy`` for arrays) and zip stamps entries with
    the time: the ids become their order of first appearance, the times 1980-01-01. Written by
    hand for skops' file protocol (tested on 0.16)."""
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
            target.writestr(zipfile.ZipInfo("schema.json", (1980, 1, 1, 0, 0, 0)), schema,
                            compress_type=zipfile.ZIP_DEFLATED)
            for new_id in sorted(arrays, key=int):
                target.writestr(zipfile.ZipInfo(f"{new_id}.npy", (1980, 1, 1, 0, 0, 0)),
                                source.read(arrays[new_id]), compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def load_experts(path: Path, trusted: Iterable[str] = ()) -> list[SklearnExpert]:
    """The experts :func:`save_experts` wrote. Loading runs no code from the file; ValueError
    names the file and any type in it beyond skops' defaults, :data:`TRUSTED_TYPES` and
    ``trusted`` (the types its reader chooses to allow)."""
    import skops.io

    data, allowed = Path(path).read_bytes(), {*TRUSTED_TYPES, *trusted}
    try:
        unknown = sorted(set(skops.io.get_untrusted_types(data=data)) - allowed)
        saved = None if unknown else skops.io.loads(data, trusted=sorted(allowed))
    except Exception as error:  # a damaged zip, or not a skops file
        raise ValueError(f"{path} is not a fedens experts file ({type(error).__name__}: {error})") from None
    if unknown:
        raise ValueError(f"{path} holds types fedens does not load unless trusted: {', '.join(unknown)}")
    if not isinstance(saved, dict) or saved.get("format") != EXPERTS_FORMAT:
        raise ValueError(f"{path} is not a fedens experts file (expected format {EXPERTS_FORMAT!r})")
    return [SklearnExpert(r["estimator"], r["num_classes"], name=r["name"], family=r["family"],
                          cost=r["cost"], site=r["site"]) for r in saved["experts"]]
