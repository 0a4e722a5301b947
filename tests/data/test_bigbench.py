"""BIG-bench's task files: extracted from the pinned source distribution, read as BIG-bench
prompts them, options shuffled with the right one followed."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from fedens.data import bigbench
from fedens.data.bigbench import TASKS, bigbench_task, extract
from fedens.files import sha256_bytes, sha256_file


def test_every_task_is_its_pinned_file_and_reads_as_questions():
    for name in TASKS:
        task = bigbench_task(name)
        assert sha256_file(bigbench.tasks_dir() / name / "task.json") == TASKS[name]
        assert len(task.questions) >= 149 and len(task.labels) == len(task.questions)
        assert all(0 <= y < len(q.options) for q, y in zip(task.questions, task.labels, strict=True))


def test_a_question_is_prompted_as_big_bench_prompts_it_and_keeps_its_answer():
    spec = json.loads(bigbench.task_file("implicatures").read_text())
    example = spec["examples"][0]
    q, y = bigbench_task("implicatures").questions[0], bigbench_task("implicatures").labels[0]
    # task_prefix, example_input_prefix, input, example_output_prefix; no choices (append is "False")
    assert q.question == spec["task_prefix"] + spec["example_input_prefix"] + example["input"] + \
        spec["example_output_prefix"]
    assert sorted(q.options) == sorted(example["target_scores"])
    assert example["target_scores"][q.options[y]] == max(example["target_scores"].values())
    social = bigbench_task("social_iqa").questions[0]  # no prefixes set: BIG-bench's defaults, choices listed
    assert social.question.startswith("\nQ: ") and social.question.endswith("\nA: ")
    assert all(f"\n  choice: {o}" in social.question for o in social.options)
    unlisted = bigbench_task("social_iqa", list_choices=False)
    assert bigbench_task("social_iqa").choices_listed and not unlisted.choices_listed
    assert "choice:" not in unlisted.questions[0].question and unlisted.questions[0].options == social.options
    np.testing.assert_array_equal(unlisted.labels, bigbench_task("social_iqa").labels)


def test_options_are_shuffled_so_position_does_not_give_the_answer():
    # goal_step_wikihow lists the right goal at varying places; after the shuffle every position
    # holds about a quarter of the answers, and another seed gives another order
    task = bigbench_task("goal_step_wikihow/goal_inference")
    shares = np.bincount(task.labels, minlength=4)[:4] / len(task.labels)
    assert np.all(np.abs(shares - 0.25) < 0.04), shares
    other = bigbench_task("goal_step_wikihow/goal_inference", seed=1)
    assert not np.array_equal(task.labels, other.labels)
    assert [sorted(q.options) for q in task.questions[:50]] == \
        [sorted(q.options) for q in other.questions[:50]]


def _sdist(tmp_path, files: dict[str, bytes]):
    path = tmp_path / bigbench.SDIST
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(bigbench._MEMBER.format(task=name))
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_extraction_refuses_another_archive_or_an_altered_task(tmp_path, monkeypatch):
    blob = json.dumps({"examples": [{"input": "x?", "target_scores": {"a": 1, "b": 0}}] * 3}).encode()
    path = _sdist(tmp_path, {"toy": blob})
    monkeypatch.setattr(bigbench, "TASKS", {"toy": sha256_bytes(blob)})
    with pytest.raises(ValueError, match=r"bigbench-1\.0\.0\.tar\.gz has sha256 [0-9a-f]{16}\.\.\., expected "
                                         r"1bb398a5512c6d79\.\.\."):
        extract(path, tmp_path / "out")
    monkeypatch.setattr(bigbench, "SDIST_SHA256", sha256_file(path))
    assert [p.read_bytes() for p in extract(path, tmp_path / "out")] == [blob]
    monkeypatch.setattr(bigbench, "TASKS", {"toy": "0" * 64})
    with pytest.raises(ValueError, match=r"toy/task\.json has sha256 .*, expected 0000000000000000"):
        extract(path, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # nothing written


def test_a_missing_or_unknown_task_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDENS_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"task 'snarks' is missing .*: run \./scripts/setup"):
        bigbench.task_file("snarks")
    with pytest.raises(ValueError, match=r"unknown BIG-bench task 'nope'; fedens extracts \["):
        bigbench.task_file("nope")
