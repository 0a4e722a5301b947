"""Your own records, from a file: ``data=local data.path=FILE data.label=COLUMN``.

A table (CSV, Parquet, JSON Lines, NumPy ``.npz`` with one array per column, or a folder a
Hugging Face ``datasets.Dataset`` was saved to) becomes a task: its rows are split, stratified by
label, into the coordinator's public and test parts and the sites' private part. Features are the
columns named in ``data.features`` (all but the label and the site column by default): numeric
columns are standardised with the public part's mean and deviation, string columns one-hot encoded
with the categories of the public part (a category the public part lacks encodes as all zeros).
Columns named in ``data.text`` hold free text: they become TF-IDF vectors over the public part's
``data.text_features`` most frequent words (for routers and trained experts) and travel raw beside
the features (:class:`fedens.data.rows.TextRows`) to the experts that read text.
Everything fitted is fitted on the public part only, which the coordinator holds anyway. Labels
are the sorted distinct labels of the table, or ``data.labels`` if given (then any other label is
an error). ``partition.column`` names a column that says which site holds a record (hospital,
region); it is read here for the sites and never used as a feature.

Every problem is one line naming the file, the column and what was expected, raised before
anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from fedens.data.datasets import Split, TaskData
from fedens.data.rows import ExpertInputs, features, with_text
from fedens.data.schema import DataSchemaError

FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSON Lines", ".ndjson": "JSON Lines",
           ".npz": "NumPy .npz"}


class TableError(DataSchemaError):
    """A table that cannot be a task, or a site's table that does not fit it; the message names the
    file, the column and what was expected."""


@dataclass(frozen=True, eq=False)  # compared (and cached) by identity: one object per file version
class Table:
    """The rows of a file: labels as class numbers, the feature columns raw, the site column."""

    path: Path
    labels: tuple[str, ...]  # class number i is labels[i]
    y: np.ndarray
    columns: dict[str, np.ndarray]  # feature name -> raw values
    groups: np.ndarray | None  # the site column's values, or None

    def __len__(self) -> int:
        return len(self.y)


def _read(path: Path) -> Any:
    """The file as a pandas DataFrame, by its extension (a folder: a saved ``datasets.Dataset``)."""
    import pandas as pd

    if not path.exists():
        raise TableError(f"data.path={str(path)!r} does not exist: expected a CSV, Parquet, JSON Lines or "
                         ".npz file, or a folder a datasets.Dataset was saved to")
    kind = "a datasets.Dataset folder" if path.is_dir() else FORMATS.get(path.suffix.lower())
    if kind is None:
        raise TableError(f"data.path={str(path)!r} has extension {path.suffix!r}: expected one of "
                         f"{', '.join(sorted(FORMATS))} or a datasets.Dataset folder")
    try:
        if path.is_dir():
            from datasets import load_from_disk

            return load_from_disk(str(path)).to_pandas()
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return pd.DataFrame({name: data[name] for name in data.files})
        return pd.read_json(path, lines=True)
    except Exception as error:  # each reader raises its own kinds
        said = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TableError(f"data.path={str(path)!r} is not a readable {kind} file ({said[:200]})") from None


def _column(frame: Any, name: str, key: str, path: Path) -> np.ndarray:
    if name not in frame.columns:
        raise TableError(f"{path.name} has no column {key}={name!r}: its columns are "
                         f"{', '.join(map(str, frame.columns))}")
    return frame[name].to_numpy()


def _version(path: str) -> tuple[int, int] | None:
    """What says that a file changed: its modification time and size (None: no such file)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def read_table(path: str, label: str, features: tuple[str, ...] | None, site_column: str | None,
               labels: tuple[str, ...] | None) -> Table:
    """The table at ``path``, read once per process while the file is unchanged."""
    return _read_table(path, _version(path), label, features, site_column, labels)


@cache
def _read_table(path: str, version: tuple[int, int] | None, label: str, features: tuple[str, ...] | None,
                site_column: str | None, labels: tuple[str, ...] | None) -> Table:
    file = Path(path)
    frame = _read(file)
    if len(frame) == 0:
        raise TableError(f"{file.name} has no rows: expected at least one record per class")
    raw_labels = _column(frame, label, "data.label", file)
    if (row := _first_missing(raw_labels)) is not None:
        raise TableError(f"{file.name} column {label!r} has no label in row {row}: expected a label per "
                         "record")
    as_text = [str(v.item() if isinstance(v, np.generic) else v) for v in raw_labels]
    names = tuple(labels) if labels else tuple(sorted(set(as_text), key=_natural))
    unknown = sorted(set(as_text) - set(names))
    if unknown:
        row = next(i for i, v in enumerate(as_text) if v not in names)
        raise TableError(f"{file.name} column {label!r} has label {unknown[0]!r} (row {row}): expected "
                         f"one of data.labels={list(names)}")
    if len(names) < 2:
        raise TableError(f"{file.name} column {label!r} has {len(names)} distinct label: expected at least 2")
    index = {name: i for i, name in enumerate(names)}
    y = np.array([index[v] for v in as_text])
    groups = (np.array([str(v) for v in _column(frame, site_column, "partition.column", file)])
              if site_column else None)
    taken = {label, *([site_column] if site_column else [])}
    chosen = list(features) if features else [c for c in frame.columns if c not in taken]
    for name in chosen:
        if name in taken:
            raise TableError(f"data.features names {name!r}, the {'label' if name == label else 'site'} "
                             "column: expected feature columns only")
        _column(frame, name, "data.features", file)
    if not chosen:
        raise TableError(f"{file.name} has no feature columns besides {sorted(taken)}")
    return Table(file, names, y.astype(np.int64), {c: frame[c].to_numpy() for c in chosen}, groups)


def _first_missing(values: np.ndarray) -> int | None:
    """The first row whose value is missing (None or NaN), or None."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
    return missing.index(True) if any(missing) else None


def _natural(text: str) -> tuple[Any, ...]:
    """Sort labels "2" before "10": numbers by value, then the rest as text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


@dataclass(frozen=True)
class TextVocabulary:
    """A text column's TF-IDF encoding: its words (one feature each, in order) and their inverse
    document frequencies on the public rows. Term counts are sublinear (1 + log tf), rows l2-normed."""

    words: tuple[str, ...]
    idf: tuple[float, ...]

    @classmethod
    def fit(cls, texts: np.ndarray, width: int) -> TextVocabulary:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(max_features=width, sublinear_tf=True)
        try:
            vectorizer.fit([str(t) for t in texts])
        except ValueError:  # no word at all in the public rows
            return cls((), ())
        return cls(tuple(vectorizer.get_feature_names_out()), tuple(float(v) for v in vectorizer.idf_))

    def transform(self, texts: np.ndarray) -> np.ndarray:
        if not self.words:
            return np.zeros((len(texts), 0))
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(vocabulary=list(self.words), sublinear_tf=True)
        vectorizer.idf_ = np.asarray(self.idf)
        return vectorizer.transform([str(t) for t in texts]).toarray()


@dataclass(frozen=True)
class Encoder:
    """Feature columns -> a float32 matrix, fitted on the public rows only."""

    numeric: dict[str, tuple[float, float]]  # name -> (mean, std)
    categories: dict[str, tuple[str, ...]]  # name -> the public rows' categories
    text: dict[str, TextVocabulary] = field(default_factory=dict)  # name -> its TF-IDF words

    @classmethod
    def fit(cls, table: Table, rows: np.ndarray, text: tuple[str, ...] = (), width: int = 256) -> Encoder:
        numeric, categories, vocabularies = {}, {}, {}
        for name, values in table.columns.items():
            if name in text:
                vocabularies[name] = TextVocabulary.fit(values[rows], width)
            elif _is_numeric(values):
                column = values[rows].astype(np.float64)
                std = float(column.std())
                numeric[name] = (float(column.mean()), std if std > 0 else 1.0)
            else:
                categories[name] = tuple(sorted({str(v) for v in values[rows]}))
        return cls(numeric, categories, vocabularies)

    def transform(self, table: Table, rows: np.ndarray) -> np.ndarray:
        parts = []
        for name, values in table.columns.items():
            if name in self.text:
                parts.append(self.text[name].transform(values[rows]))
            elif name in self.numeric:
                mean, std = self.numeric[name]
                parts.append(((values[rows].astype(np.float64) - mean) / std)[:, None])
            else:
                seen = np.array([str(v) for v in values[rows]])
                parts.append(np.stack([seen == c for c in self.categories[name]], axis=1).astype(np.float64)
                             if self.categories[name] else np.zeros((len(rows), 0)))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def inputs(self, table: Table, rows: np.ndarray) -> ExpertInputs:
        """The experts' inputs on ``rows``: the features, with the raw text columns if any."""
        return with_text(self.transform(table, rows),
                         {name: np.asarray([str(v) for v in table.columns[name][rows]], dtype=str)
                          for name in self.text})


def _is_numeric(values: np.ndarray) -> bool:
    return np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.complexfloating)


def check_features(table: Table) -> None:
    """TableError naming the first numeric column with a missing or non-finite value."""
    for name, values in table.columns.items():
        where = f"{table.path.name} column {name!r}"
        if _is_numeric(values) and not (finite := np.isfinite(values.astype(np.float64))).all():
            raise TableError(f"{where} has a missing or non-finite value (row {int(np.argmin(finite))}): "
                             "expected finite numbers (fill or drop the row)")
        if not _is_numeric(values) and (row := _first_missing(values)) is not None:
            raise TableError(f"{where} has a missing value (row {row}): expected a category per record")


def split_rows(table: Table, public_fraction: float, test_fraction: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row numbers of the public, private and test parts (stratified by label)."""
    rows = np.arange(len(table))
    counts = np.bincount(table.y, minlength=len(table.labels))
    if (counts < 3).any():
        rare = table.labels[int(np.argmin(counts))]
        raise TableError(f"{table.path.name} has {int(counts.min())} record(s) of label {rare!r}: expected "
                         "at least 3 per label (one each for the public, private and test parts)")
    try:
        rest, test = train_test_split(rows, test_size=test_fraction, stratify=table.y, random_state=seed)
        public, private = train_test_split(rest, train_size=public_fraction / (1.0 - test_fraction),
                                           stratify=table.y[rest], random_state=seed)
    except ValueError as error:
        raise TableError(f"{table.path.name}: data.public_fraction={public_fraction} and "
                         f"data.test_fraction={test_fraction} cannot split {len(table)} records by label "
                         f"({error})") from None
    return np.sort(public), np.sort(private), np.sort(test)


@dataclass(frozen=True)
class TableTask:
    task: TaskData
    labels: tuple[str, ...]
    groups: np.ndarray | None  # the private records' site-column values, or None
    encoder: Encoder
    feature_names: tuple[str, ...]


def load_table_task(data_cfg: Any, site_column: str | None, seed: int) -> TableTask:
    """The task ``data=local`` describes: its table split, encoded, with the private rows' sites
    (computed once per process for each setting while the file is unchanged: validation asks
    for it rule by rule)."""
    features = tuple(data_cfg.features) if data_cfg.get("features") else None
    labels = tuple(str(v) for v in data_cfg.labels) if data_cfg.get("labels") else None
    table = read_table(str(data_cfg.path), str(data_cfg.label), features, site_column, labels)
    text = tuple(str(c) for c in data_cfg.get("text") or ())
    for name in text:
        if name not in table.columns:
            raise TableError(f"data.text names {name!r}, which is not a feature column of {table.path.name}: "
                             f"expected one of {', '.join(table.columns)}")
    return _table_task(table, float(data_cfg.public_fraction), float(data_cfg.test_fraction), site_column,
                       seed, text, int(data_cfg.get("text_features") or 256))


@cache
def _table_task(table: Table, public_fraction: float, test_fraction: float, site_column: str | None,
                seed: int, text: tuple[str, ...] = (), text_features: int = 256) -> TableTask:
    check_features(table)
    public, private, test = split_rows(table, public_fraction, test_fraction, seed)
    public_counts = np.bincount(table.y[public], minlength=len(table.labels))
    if (public_counts < 2).any():
        rare = table.labels[int(np.argmin(public_counts))]
        raise TableError(f"{table.path.name}: data.public_fraction={public_fraction} leaves the "
                         f"public part {int(public_counts.min())} record(s) of label {rare!r}: expected at "
                         "least 2 per label (the experts' and the router's training records)")
    held = set(table.groups[private].tolist()) if table.groups is not None else set()
    if table.groups is not None and (empty := sorted(set(table.groups.tolist()) - held)):
        raise TableError(f"{table.path.name} column {site_column!r}: site {empty[0]!r} has no private "
                         f"records (its {int((table.groups == empty[0]).sum())} went to the public or test "
                         "part): expected records for every site; give it more or lower the fractions")
    encoder = Encoder.fit(table, public, text, text_features)

    def split(rows: np.ndarray) -> Split:
        inputs = encoder.inputs(table, rows)
        return Split(features(inputs), table.y[rows], getattr(inputs, "text", None))

    task = TaskData(table.path.name, len(table.labels), split(public), split(private), split(test))
    return TableTask(task, table.labels, None if table.groups is None else table.groups[private], encoder,
                     tuple(table.columns))


def table_schema(table: TableTask, label: str) -> dict[str, Any]:
    """What a site needs to read its own table as the task's records: the label column and set,
    the feature columns in order and the public part's encoding (public statistics only)."""
    return {"label": label, "labels": list(table.labels), "features": list(table.feature_names),
            "numeric": {n: list(v) for n, v in table.encoder.numeric.items()},
            "categories": {n: list(v) for n, v in table.encoder.categories.items()},
            "text": {n: {"words": list(v.words), "idf": list(v.idf)} for n, v in table.encoder.text.items()}}


def read_site_table(path: Path, schema: dict[str, Any]) -> tuple[ExpertInputs, np.ndarray]:
    """A site's own table at ``path`` as ``(inputs, y)`` by the coordinator's ``schema``
    (:func:`table_schema`): the features, with the text columns when the task has any;
    TableError names the column that does not fit."""
    table = read_table(str(path), schema["label"], tuple(schema["features"]), None, tuple(schema["labels"]))
    check_features(table)
    for name in schema["numeric"]:
        if not _is_numeric(table.columns[name]):
            raise TableError(f"{path.name} column {name!r} has dtype {table.columns[name].dtype}: expected "
                             "numbers, as in the task's table")
    encoder = Encoder({n: tuple(v) for n, v in schema["numeric"].items()},
                      {n: tuple(v) for n, v in schema["categories"].items()},
                      {n: TextVocabulary(tuple(v["words"]), tuple(v["idf"]))
                       for n, v in schema.get("text", {}).items()})
    return encoder.inputs(table, np.arange(len(table))), table.y
