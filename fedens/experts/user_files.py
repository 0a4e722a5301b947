"""The user's own experts (``experts=own``), each shipped to the sites code-free.

An entry of ``experts.members`` is one of

* a file: a path, or a mapping with ``path`` and options: ``name`` and ``cost`` for every
  format; ``outputs`` (probabilities | logits), ``labels`` and ``columns`` for ONNX and torch;
  ``module`` (``package.module:Class``, or ``package.module.Class`` as Hydra overrides spell it)
  and ``kwargs`` for a torch state dict. One reader per format; the sites get skops or ONNX;
* a model by registry name, ``{kind: causal_lm | openai_chat, prompt: ..., answers: ...}``: a
  language model or an OpenAI-compatible endpoint asked about each record's text columns
  (:class:`~fedens.experts.prompted.PromptedExpert`; ``prompt`` names them as ``{column}``,
  ``answers`` gives each label's answer text, ``calibrate`` fits a per-class bias on the public
  records); every other key goes to the adapter (``model_path``, ``base_url``, ``model``, ...);
* ``{_target_: package.Class, ...}``, built by Hydra: a registered adapter the sites can rebuild
  from its record (e.g. ``fedens.experts.PromptedExpert`` around a nested ``_target_``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedens.experts.base import TRUSTED_TYPES, Expert, SklearnExpert, read_skops
from fedens.experts.onnx_expert import OnnxExpert, torch_to_onnx
from fedens.experts.prompted import PromptedExpert
from fedens.experts.registry import EXPERTS
from fedens.files import sha256_file


@dataclass(frozen=True)
class FileTask:
    """What an expert file is read against: the task's classes and features, and for a table
    task its schema and label names (the expert then takes the table's own columns)."""

    num_classes: int
    num_features: int | None = None
    table: dict[str, Any] | None = None
    label_names: tuple[str, ...] | None = None
    trust_pickle: bool = False


def _sklearn(path: Path, options: dict[str, Any], task: FileTask, estimator: Any = None) -> SklearnExpert:
    if estimator is None:
        estimator = read_skops(path.read_bytes(), set(TRUSTED_TYPES),
                               not_skops=f"expert file {path.name} is not a skops file",
                               untrusted=f"expert file {path.name} holds types fedens does not load")
    if not (hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")):
        raise ValueError(f"expert file {path.name} holds a {type(estimator).__name__}: expected a fitted "
                         "classifier with predict_proba and classes_")
    expert = SklearnExpert(estimator, task.num_classes, name=options.get("name", path.stem), family="file",
                           cost=options.get("cost", 1.0), table=task.table, label_names=task.label_names)
    expert.class_columns()  # its labels are the task's, or ValueError now
    return expert


def _pickled_sklearn(path: Path, options: dict[str, Any], task: FileTask) -> SklearnExpert:
    """A joblib or pickle file, which runs code when read: only with ``trust_pickle``. The sites
    get it as skops, so it must hold only types they load, or ValueError names the others."""
    import joblib
    import skops.io

    if not task.trust_pickle:
        raise ValueError(f"expert file {path.name} is a pickle, which runs code when it is read: save it "
                         "with skops.io.dump, or set experts.trust_pickles=true if you trust its author")
    try:
        estimator = joblib.load(path)
    except Exception as error:  # noqa: BLE001  (whatever the pickle raises)
        raise ValueError(f"expert file {path.name} is not a readable pickle ({type(error).__name__}: "
                         f"{error})") from None
    try:
        data = skops.io.dumps(estimator)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"expert file {path.name} holds a {type(estimator).__name__} that cannot be "
                         f"shipped to the sites as skops ({type(error).__name__}: {error})") from None
    read_skops(data, set(TRUSTED_TYPES), not_skops=f"expert file {path.name} cannot be shipped as skops",
               untrusted=f"expert file {path.name} holds types the sites do not load")
    return _sklearn(path, options, task, estimator)


def _onnx_expert(path: Path, model: bytes, options: dict[str, Any], task: FileTask, family: str,
                 outputs: str) -> OnnxExpert:
    try:
        return OnnxExpert(model, task.num_classes, options.get("name", path.stem),
                          outputs=options.get("outputs", outputs), labels=options.get("labels"),
                          columns=options.get("columns"), table=task.table, label_names=task.label_names,
                          family=family, cost=options.get("cost", 1.0))
    except ValueError as error:
        raise ValueError(f"expert file {path.name}: {error}") from None


def _onnx(path: Path, options: dict[str, Any], task: FileTask) -> OnnxExpert:
    return _onnx_expert(path, path.read_bytes(), options, task, "onnx", "probabilities")


def _torch(path: Path, options: dict[str, Any], task: FileTask) -> OnnxExpert:
    """A torch state dict and the class it fits, built here (the coordinator runs the user's own
    code) and converted to ONNX, so the sites run a graph, not the class."""
    if not options.get("module"):
        raise ValueError(f"expert file {path.name} is a torch state dict: name the module it fits as "
                         "module: package.module:Class (and its kwargs)")
    width = _input_width(path, options, task)
    key = (sha256_file(path), options["module"],
           repr(sorted(dict(options.get("kwargs") or {}).items())), width)
    if key not in _CONVERTED:
        module = _built_module(path, options["module"], dict(options.get("kwargs") or {}))
        try:
            module.load_state_dict(_state_dict(path))
        except RuntimeError as error:
            raise ValueError(f"expert file {path.name} does not fit {options['module']}: "
                             f"{' '.join(str(error).split())}") from None
        _CONVERTED[key] = torch_to_onnx(module, width)
    return _onnx_expert(path, _CONVERTED[key], options, task, "torch", "logits")


_CONVERTED: dict[tuple, bytes] = {}  # in-process: a run checks its experts, then prepares them


def _input_width(path: Path, options: dict[str, Any], task: FileTask) -> int:
    if task.table is None:
        if task.num_features is None:
            raise ValueError(f"expert file {path.name}: the task's feature count is needed to convert it")
        return task.num_features
    columns = list(options.get("columns") or task.table["features"])
    if text := [c for c in columns if c not in task.table["numeric"]]:
        raise ValueError(f"expert file {path.name}: column {text[0]!r} is not numeric: a torch module takes "
                         "numbers; list its numeric columns in columns: [...]")
    return len(columns)


def _built_module(path: Path, target: str, kwargs: dict[str, Any]) -> Any:
    from torch import nn

    module_name, _, class_name = str(target).rpartition(":" if ":" in str(target) else ".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"expert file {path.name}: cannot import module {target!r} ({type(error).__name__}: "
                         f"{error}): expected package.module:Class (or package.module.Class) on the Python "
                         "path") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"expert file {path.name}: {target} is not a torch nn.Module class")
    try:
        return cls(**kwargs)
    except Exception as error:  # noqa: BLE001  (the user's constructor)
        raise ValueError(f"expert file {path.name}: {target}(**{kwargs}) failed ({type(error).__name__}: "
                         f"{error})") from None


def _state_dict(path: Path) -> Mapping[str, Any]:
    """The tensors of a ``.safetensors`` or ``torch.save`` file, read without running code."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (pickle's and safetensors' errors)
        raise ValueError(f"expert file {path.name} is not a file of tensors ({type(error).__name__}: "
                         f"{str(error).splitlines()[0]}): save module.state_dict()") from None
    if not (isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"expert file {path.name} holds a {type(state).__name__}: expected a state dict "
                         "(module.state_dict())")
    return state


#: a file's suffix -> its reader and the options it takes beyond name and cost
READERS: dict[str, tuple[Callable[[Path, dict[str, Any], FileTask], Expert], tuple[str, ...]]] = {
    ".skops": (_sklearn, ()),
    **{suffix: (_pickled_sklearn, ()) for suffix in (".joblib", ".pkl", ".pickle")},
    ".onnx": (_onnx, ("outputs", "labels", "columns")),
    **{suffix: (_torch, ("module", "kwargs", "outputs", "labels", "columns"))
       for suffix in (".pt", ".pth", ".safetensors")},
}


def load_expert_file(entry: str | Path | Mapping[str, Any], num_classes: int,
                     table: dict[str, Any] | None = None, label_names: tuple[str, ...] | None = None,
                     trust_pickle: bool = False, num_features: int | None = None) -> Expert:
    """The expert an entry of ``experts.members`` names (module docstring), over ``num_classes``
    classes; with ``table`` it takes the table's own columns. Reading runs no code from the file
    except a pickle's, which needs ``trust_pickle``. ValueError (one line) names the file and what
    is wrong."""
    options = dict(entry) if isinstance(entry, Mapping) else {"path": entry}
    if not options.get("path"):
        raise ValueError(f"expert entry {options} has no path: expected a file or {{path: FILE, ...}}")
    path = Path(str(options.pop("path")))
    if not path.is_file():
        raise ValueError(f"expert file {str(path)!r} does not exist: expected a skops, ONNX or torch file")
    if path.suffix.lower() not in READERS:
        raise ValueError(f"expert file {path.name} has suffix {path.suffix!r}: expected one of "
                         f"{sorted(READERS)}")
    reader, extra = READERS[path.suffix.lower()]
    if unknown := sorted(set(options) - {"name", "cost", *extra}):
        raise ValueError(f"expert file {path.name} has option {unknown[0]!r}: expected options of a "
                         f"{path.suffix} file from {sorted({'name', 'cost', *extra})}")
    return reader(path, options, FileTask(num_classes, num_features, table, label_names, trust_pickle))


#: the keys of a ``{kind: ...}`` entry that shape the question; the rest go to the adapter
PROMPT_KEYS = ("prompt", "answers", "calibrate", "max_chars", "cost")


def load_expert_entry(entry: str | Path | Mapping[str, Any], num_classes: int,
                      table: dict[str, Any] | None = None, label_names: tuple[str, ...] | None = None,
                      trust_pickle: bool = False, num_features: int | None = None) -> Expert:
    """The expert an entry of ``experts.members`` names (module docstring); ValueError (one line)
    names the entry and what is wrong."""
    options = dict(entry) if isinstance(entry, Mapping) else {"path": entry}
    if "_target_" in options:
        return _targeted(options)
    if "kind" in options:
        return _by_kind(options, num_classes, label_names)
    return load_expert_file(options, num_classes, table, label_names, trust_pickle, num_features)


def _answers(name: str, answers: Any, num_classes: int,
             label_names: tuple[str, ...] | None) -> tuple[str, ...]:
    """Each class's answer text, in class order, from a list or a {label: text} mapping."""
    if isinstance(answers, Mapping):
        if label_names is None or sorted(map(str, answers)) != sorted(label_names):
            raise ValueError(f"expert {name!r}: answers name labels {sorted(map(str, answers))}: expected "
                             f"one answer for each of the task's labels {list(label_names or [])}")
        answers = [answers[label] for label in label_names]
    if not isinstance(answers, (list, tuple)) or len(answers) != num_classes:
        raise ValueError(f"expert {name!r}: answers {answers!r}: expected {num_classes} answer texts, one "
                         "per label, as a list in label order or a {label: text} mapping")
    return tuple(str(a) for a in answers)


def _by_kind(options: dict[str, Any], num_classes: int, label_names: tuple[str, ...] | None) -> Expert:
    kind = str(options.pop("kind"))
    name = str(options.get("name", kind))
    if kind not in ("causal_lm", "openai_chat"):
        raise ValueError(f"expert {name!r} has kind {kind!r}: expected causal_lm or openai_chat (a file "
                         "expert is {path: FILE}, any other adapter {_target_: package.Class})")
    if not options.get("prompt"):
        raise ValueError(f"expert {name!r} ({kind}) has no prompt: expected prompt: \"...{{column}}...\" "
                         "naming the text columns it reads")
    prompt = {key: options.pop(key) for key in PROMPT_KEYS if key in options}
    try:
        inner = EXPERTS.build(kind, **options)
        return PromptedExpert(inner, str(prompt["prompt"]),
                              _answers(name, prompt.get("answers"), num_classes, label_names), name=name,
                              calibrate=bool(prompt.get("calibrate", True)),
                              max_chars=prompt.get("max_chars"), cost=prompt.get("cost", inner.cost))
    except TypeError as error:  # an option the adapter does not take
        raise ValueError(f"expert {name!r} ({kind}): {error}") from None


def _targeted(options: dict[str, Any]) -> Expert:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = options["_target_"]
    try:
        expert = instantiate(options)
    except InstantiationException as error:
        said = " ".join(str(error).split())
        raise ValueError(f"expert entry _target_={target!r} cannot be built ({said[:300]})") from None
    if type(expert) not in EXPERTS.values() or not hasattr(expert, "to_record"):
        raise ValueError(f"expert entry _target_={target!r} built an object of type "
                         f"{type(expert).__name__}: expected a "
                         f"registered expert adapter the sites can rebuild without code ({sorted(EXPERTS)})")
    return expert
