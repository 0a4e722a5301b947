"""Adapter for an ONNX model run by onnxruntime: how experts from any framework (torch modules,
scikit-learn pipelines converted by skl2onnx, ...) reach the sites as a graph that runs no code."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedens.data.rows import features
from fedens.experts.registry import register_expert
from fedens.experts.validation import check_cost, check_num_classes, check_probabilities, task_class_columns

#: onnxruntime's input type -> the NumPy dtype fedens feeds it
INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(string)": object}
OUTPUTS = ("probabilities", "logits")


def graph_class_labels(model: bytes) -> tuple | None:
    """The class labels a converted classifier's graph carries (skl2onnx writes them on its
    classifier and ZipMap nodes as ``classlabels_strings`` or ``classlabels_int64s``), or None."""
    import onnx

    found = set()
    for node in onnx.load_model_from_string(model).graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings":
                found.add(tuple(s.decode() for s in attribute.strings))
            elif attribute.name == "classlabels_int64s":
                found.add(tuple(int(i) for i in attribute.ints))
    return found.pop() if len(found) == 1 else None


@register_expert("onnx")
@dataclass(eq=False)
class OnnxExpert:
    """An ONNX classifier as an expert over ``num_classes`` classes.

    Inputs: the task's feature array; with ``table`` (a table task's schema), the table's own
    columns instead: one input per column when the graph's inputs are named after columns
    (skl2onnx's habit), else one float matrix of the ``columns`` given (default: every feature
    column, which must then all be numbers). Output: the graph's first 2-D float output, or its
    ZipMap; ``outputs="logits"`` applies a softmax. ``labels`` names the task label of each output
    column; by default the labels the graph carries, else column k is the task's class k.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from fedens.experts.onnx_expert import torch_to_onnx
    >>> e = OnnxExpert(torch_to_onnx(torch.nn.Linear(4, 3), 4), 3, "linear", outputs="logits")
    >>> e.predict_proba(np.zeros((5, 4), dtype=np.float32)).shape
    (5, 3)
    """

    model: bytes
    num_classes: int
    name: str
    outputs: str = "probabilities"
    labels: tuple | None = None
    columns: tuple[str, ...] | None = None
    table: dict[str, Any] | None = None
    label_names: tuple[str, ...] | None = None
    family: str = "onnx"
    cost: float = 1.0
    site: str | None = None
    _session: Any = field(default=None, init=False, repr=False)
    _output: str = field(default="", init=False, repr=False)  # the graph output read
    _by_input: dict[str, str] | None = field(default=None, init=False, repr=False)  # input -> column

    def __post_init__(self) -> None:
        self.num_classes = check_num_classes(self.num_classes, self.name)
        self.cost = check_cost(self.cost, self.name)
        if self.outputs not in OUTPUTS:
            raise ValueError(f"expert {self.name!r}: outputs must be one of {list(OUTPUTS)}, "
                             f"got {self.outputs!r}")
        self.model = bytes(self.model)
        self._output = self._output_name()  # onnxruntime runs the graph, it has an output fedens reads
        self._by_input = self._per_column_inputs()
        self.labels = tuple(self.labels) if self.labels is not None else graph_class_labels(self.model)
        self.columns = tuple(self.columns) if self.columns is not None else None

    @property
    def session(self) -> Any:
        """The onnxruntime session (one thread: sites run many experts side by side)."""
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only
            try:
                self._session = onnxruntime.InferenceSession(self.model, options,
                                                             providers=["CPUExecutionProvider"])
            except Exception as error:  # noqa: BLE001  (onnxruntime raises its own types)
                raise ValueError(f"expert {self.name!r} is not an ONNX model onnxruntime runs "
                                 f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
        return self._session

    def _output_name(self) -> str:
        outputs = self.session.get_outputs()
        tensors = [o.name for o in outputs
                   if o.type in ("tensor(float)", "tensor(double)") and len(o.shape) == 2]
        maps = [o.name for o in outputs if o.type.startswith("seq(map(")]
        if not tensors + maps:
            raise ValueError(f"expert {self.name!r}: the ONNX graph has no 2-D float output (it has "
                             f"{[(o.name, o.type) for o in outputs]}): expected one column per class")
        return (tensors + maps)[0]

    def _per_column_inputs(self) -> dict[str, str] | None:
        """Input name -> table column when the graph takes the table's columns one input each
        (names matched as given, or as converters rewrite them: other characters to ``_``); None
        for one matrix input. ValueError when the inputs fit neither."""
        names = [i.name for i in self.session.get_inputs()]
        features = self.table["features"] if self.table else []
        by_name = {**{re.sub(r"\W", "_", f): f for f in features}, **{f: f for f in features}}
        if len(names) == 1 and names[0] not in by_name:
            return None
        if missing := [n for n in names if n not in by_name]:
            raise ValueError(f"expert {self.name!r}: the ONNX graph takes input {missing[0]!r}: expected one "
                             f"input, or one per table column named after it ({features})")
        return {n: by_name[n] for n in names}

    @property
    def reads_text(self) -> bool:
        """A graph on the table's own columns takes its text columns raw."""
        return self.table is not None

    def _feeds(self, X: np.ndarray) -> dict[str, np.ndarray]:
        from fedens.experts.base import decoded_table

        inputs = self.session.get_inputs()
        if not self.table:
            return {inputs[0].name: np.asarray(X, dtype=INPUT_DTYPES.get(inputs[0].type, np.float32))}
        frame = decoded_table(X, self.table)
        if self._by_input:
            return {i.name: _column(frame[self._by_input[i.name]], INPUT_DTYPES.get(i.type, np.float32))
                    for i in inputs}
        columns = list(self.columns or self.table["features"])
        if text := [c for c in columns if c not in self.table["numeric"]]:
            raise ValueError(f"expert {self.name!r}: column {text[0]!r} is not numeric: a one-input ONNX "
                             "model takes numbers; list its numeric columns in columns: [...], or convert "
                             "it with one input per column")
        return {inputs[0].name: frame[columns].to_numpy(dtype=INPUT_DTYPES.get(inputs[0].type, np.float32))}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        feeds = self._feeds(X)
        try:
            raw = self.session.run([self._output], feeds)[0]
        except Exception as error:  # noqa: BLE001  (onnxruntime's own error types)
            raise ValueError(f"expert {self.name!r} failed on inputs of shape {np.shape(features(X))} "
                             f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
        labels = self.labels
        if isinstance(raw, list):  # a ZipMap: one {label: probability} per row
            if labels is None and raw:
                labels = tuple(raw[0])
            raw = np.array([[row[label] for label in labels] for row in raw], dtype=np.float64)
        raw = np.asarray(raw, dtype=np.float64).reshape(len(X), -1)
        if self.outputs == "logits":
            raw = np.exp(raw - raw.max(axis=1, keepdims=True))
            raw /= raw.sum(axis=1, keepdims=True)
        else:
            try:
                check_probabilities(raw, self.name, len(X))
            except ValueError as error:
                raise ValueError(f"{error}: if the graph gives scores, set outputs: logits") from None
        if labels is None and raw.shape[1] != self.num_classes:
            raise ValueError(f"expert {self.name!r} gives {raw.shape[1]} columns: expected "
                             f"{self.num_classes}, one per class of the task, or labels: [...] naming each "
                             "column's label")
        out = np.zeros((len(X), self.num_classes))
        columns = (np.arange(self.num_classes) if labels is None
                   else task_class_columns(labels, self.label_names, self.num_classes, self.name))
        if len(columns) != raw.shape[1]:
            raise ValueError(f"expert {self.name!r} gives {raw.shape[1]} columns but names {len(columns)} "
                             "labels")
        out[:, columns] = raw
        return check_probabilities(out / out.sum(axis=1, keepdims=True), self.name, len(X), self.num_classes)

    def to_record(self) -> dict[str, Any]:
        """What the experts file holds for this expert: plain values and the graph's bytes."""
        return {"name": self.name, "family": self.family, "cost": float(self.cost), "site": self.site,
                "num_classes": int(self.num_classes), "model": np.frombuffer(self.model, dtype=np.uint8),
                "outputs": self.outputs, "labels": list(self.labels) if self.labels is not None else None,
                "columns": list(self.columns) if self.columns else None, "table": self.table,
                "label_names": list(self.label_names) if self.label_names else None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> OnnxExpert:
        return cls(np.asarray(record["model"], dtype=np.uint8).tobytes(), record["num_classes"],
                   record["name"], outputs=record["outputs"], labels=record["labels"],
                   columns=record["columns"], table=record["table"],
                   label_names=tuple(record["label_names"]) if record["label_names"] else None,
                   family=record["family"], cost=record["cost"], site=record["site"])


def _column(values: Any, dtype: Any) -> np.ndarray:
    """One table column as an (n, 1) input; an unknown category (None) as the empty string."""
    if dtype is object:
        return np.array(["" if v is None else str(v) for v in values], dtype=object).reshape(-1, 1)
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def torch_to_onnx(module: Any, num_inputs: int) -> bytes:
    """A torch module taking a float matrix (n, ``num_inputs``) as the bytes of an ONNX graph, by
    torch's own exporter (torch.export; the batch dimension stays dynamic). The same module gives
    the same bytes."""
    import logging
    import warnings

    import torch

    module.eval()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs each optional op it skips
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (torch.zeros(2, num_inputs),), input_names=["x"],
                                        output_names=["scores"], dynamo=True, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("n")},))
    finally:
        quiet.setLevel(level)
    return program.model_proto.SerializeToString()
