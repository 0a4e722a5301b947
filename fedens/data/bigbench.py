"""BIG-bench's multiple-choice JSON tasks, offline.

``scripts/setup`` runs ``python -m fedens.data.bigbench``: it downloads the ``bigbench`` 1.0.0
source distribution from the package index (``pip download --no-deps``; its TensorFlow
dependencies are never installed), checks its sha256 and extracts only the ``task.json`` files of
:data:`TASKS` into fedens' cache, each pinned by sha256. A task's examples become
:class:`~fedens.experts.MultipleChoiceQuestion` s prompted as BIG-bench prompts them
(``task_prefix``, ``example_input_prefix``, the choices when ``append_choices_to_input``,
``example_output_prefix``), their options shuffled by a seed, since many tasks list the right
option first. BIG-bench is Apache-2.0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from fedens.files import cache_root, sha256_bytes, sha256_file, write_atomic

SDIST = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json"
#: the tasks fedens extracts (English multiple-choice tasks with 149 or more examples; which of them
#: the offline models answer above chance is measured in experiments/lm_tasks), each file pinned
TASKS: dict[str, str] = {
    "anachronisms": "864b2377906bbd2e6feaa3d0b9b605377529d8a637867b278cd486722b179b55",
    "disambiguation_qa": "118b6a250c6e1744384763d51cfd48c931467325dbe94d79ccb2103805fa4c6a",
    "entailed_polarity": "828f6df54a850dfbe00760d625da462fc2a07fd041512ffea1fe7654b70c8c0f",
    "epistemic_reasoning": "98209623d1bf28ed6b99ec50b772b367f24467d190ceb9d1c0298e91c04548f1",
    "goal_step_wikihow/goal_inference": "ae9d68546ae17707034b284444169b6035ea291dfab15826edaa867888090de6",
    "goal_step_wikihow/step_inference": "e3cba757d9f6050a90f4a9d7b32d0159f2c0d69a4b6656588f56593f85193494",
    "hyperbaton": "8cd85fac8281210a1276a82fddd493a27b0484b84ddf65f0b4f9b4476d6233e2",
    "implicatures": "cd3dcb575f3e189ad8a7b5b32364521f569fb4136dea88542d8dc240cd5b3e7d",
    "intent_recognition": "04ca74852de19abfc64c807b096f0094bacbb82131c793d8c413cad3dfdeb5ae",
    "language_identification": "ef30e27f74dc12666eec3464faf9f413b6811e55c70a7bddf2c13ce15f8dc1ee",
    "logical_deduction/three_objects": "5e3f4a7569cb70bb1469374d3d34fb7883445a9d5743e1a81fd8dcdaf6fcb40f",
    "metaphor_boolean": "7d997585da8d50db8a8fddf6a715a034777434623643df937909d39c1a5c5a61",
    "movie_recommendation": "94e9b3bafa38735d5d44bdca5449314cd7241b6ed0bbb83d8d061efb573d2b46",
    "multiemo/all_sentence_en": "5b78ed07bf7151b5101618aa6e4e2fdbd33fb08c0e1e7ec36d93003467590569",
    "navigate": "e076d286bb54c9304de99c24a8d3ddd749be78c12af5d58315195b194c8efa18",
    "presuppositions_as_nli": "c65abd117007552b12453da7cc7b2d781042f5a34f6e6f6892ab3287d469d0ee",
    "snarks": "bf78ad6f611db889d1e3cd092a5187c33aee87aa64281c9209809569e8c3dea9",
    "social_iqa": "edc9f568b70ae6d4af0783764dbe4e4f18aa1242c675a93f534338d73a565348",
    "sports_understanding": "925617612d19ca02d7b13bfb263300cc13701dca8851151a77be8ce986feadab",
    "strategyqa": "60af9081fed20102fd8bb1e02dc7d9f12238efcba33e4c1a56b4d61cb6409803",
    "winowhy": "c36fa38ab146fd7cc60e9f4b7a34c979c5ffbcb4a6870302bf8d785fbe64d1f6",
}


def tasks_dir() -> Path:
    return cache_root() / "data" / "bigbench-1.0.0"


def task_file(task: str) -> Path:
    """The task's ``task.json``, checked against its pin (FileNotFoundError says how to get it)."""
    if task not in TASKS:
        raise ValueError(f"unknown BIG-bench task {task!r}; fedens extracts {sorted(TASKS)}")
    path = tasks_dir() / task / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"BIG-bench task {task!r} is missing ({path}): run ./scripts/setup, which "
                                f"extracts it from the package index's {SDIST}")
    if (found := sha256_file(path)) != TASKS[task]:
        raise ValueError(f"{path} has sha256 {found[:16]}..., expected {TASKS[task][:16]}... ({SDIST})")
    return path


def extract(sdist: Path, dest: Path | None = None) -> list[Path]:
    """Check ``sdist`` against its pin and write each of :data:`TASKS`' files into ``dest``."""
    if (found := sha256_file(sdist)) != SDIST_SHA256:
        raise ValueError(f"{sdist} has sha256 {found[:16]}..., expected {SDIST_SHA256[:16]}... ({SDIST})")
    dest = dest or tasks_dir()
    with tarfile.open(sdist) as tar:  # every file checked before any is written
        blobs = {task: tar.extractfile(_MEMBER.format(task=task)).read() for task in TASKS}  # type: ignore[union-attr]
    for task, blob in blobs.items():
        if (digest := sha256_bytes(blob)) != TASKS[task]:
            raise ValueError(f"{SDIST}: {task}/task.json has sha256 {digest[:16]}..., "
                             f"expected {TASKS[task][:16]}...")
    written = []
    for task, blob in blobs.items():
        path = dest / task / "task.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, blob)
        written.append(path)
    return written


def fetch() -> None:
    """Download the source distribution into a temporary folder and extract the tasks."""
    if all((tasks_dir() / t / "task.json").is_file() for t in TASKS):
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "bigbench==1.0.0", "-d", tmp], check=True)
        extract(Path(tmp) / SDIST)


@dataclass(frozen=True)
class Task:
    """A BIG-bench task's multiple-choice examples: ``questions`` (options shuffled) and
    ``labels``, the index of each one's right option."""

    name: str
    questions: list[Any]
    labels: np.ndarray
    choices_listed: bool  # the prompts list the options (BIG-bench's append_choices_to_input)


def _flag(value: Any, default: bool) -> bool:
    """BIG-bench's booleans, some of which are the strings "True" / "False"."""
    if value is None:
        return default
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


@cache
def bigbench_task(task: str, seed: int = 0, list_choices: bool | None = None) -> Task:
    """The task's examples that have ``target_scores`` and one best option, as questions; the
    options of each in an order drawn from ``seed`` and the example's position. ``list_choices``:
    whether a prompt lists the options (None: as the task file says; small models often do better
    without the list)."""
    from fedens.experts import MultipleChoiceQuestion

    spec = json.loads(task_file(task).read_text())
    prefix = spec.get("task_prefix", "")
    input_prefix = spec.get("example_input_prefix", "\nQ: ")
    output_prefix = spec.get("example_output_prefix", "\nA: ")
    choice_prefix = spec.get("choice_prefix", "\n  choice: ")
    append = _flag(spec.get("append_choices_to_input"), True) if list_choices is None else list_choices
    questions, labels = [], []
    for i, example in enumerate(spec["examples"]):
        scores = example.get("target_scores")
        if not scores or sum(v == max(scores.values()) for v in scores.values()) != 1:
            continue
        options = list(scores)
        order = np.random.default_rng([seed, i]).permutation(len(options))
        options = [options[k] for k in order]
        body = example["input"] + ("".join(choice_prefix + o for o in options) if append else "")
        questions.append(MultipleChoiceQuestion(prefix + input_prefix + body + output_prefix, options))
        labels.append(options.index(max(scores, key=scores.get)))
    return Task(task, questions, np.asarray(labels, dtype=np.int64), append)


if __name__ == "__main__":
    fetch()
