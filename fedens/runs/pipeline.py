"""Pipelines are plugins: each is one class registered by name (``pipeline=<name>`` in the
config, set by the experiment presets), declaring the config group options it takes, its schema
and how it runs. The frame (:func:`fedens.runs.run`) validates, makes the run directory, calls
:meth:`Pipeline.run` and writes the report; nothing in the frame knows a pipeline by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from fedens.config_schema import Schema
from fedens.registry import Registry

PIPELINES = Registry("pipeline")


@dataclass(frozen=True)
class RunContext:
    """What the frame gives a pipeline's run: its directory, whether it resumes, the console, and
    ``track(row, step)``, which hands a progress row to the run's tracker (fedens.runs.trackers),
    and ``phase(name)``, which times a part of the run into ``results.json``'s
    ``timing.phases_s``."""

    run_dir: Path
    resume: bool
    say: Callable[[str], None]
    track: Callable[[dict[str, Any], int], None] = lambda row, step: None
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - started


class Pipeline:
    """Base of the pipelines (``fedens/pipelines/``): subclasses set the class attributes and
    implement :meth:`run`."""

    name: ClassVar[str] = ""
    #: config group -> the options this pipeline takes (by the group's naming key, see
    #: ``fedens.runs.config.GROUP_KEYS``)
    groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: this pipeline's keys (the frame's own are checked before)
    schema: ClassVar[Schema] = Schema()

    def validate(self, cfg: DictConfig) -> None:
        """Raise ConfigError for the first key out of range (the schema, then :meth:`components`)."""
        self.schema.check(cfg)
        for schema in self.components(cfg):
            schema.check(cfg)

    def components(self, cfg: DictConfig) -> list[Schema]:
        """The schemas of the components ``cfg`` chose (a combiner's keys, a partitioner's);
        by default the partitioner's, for a pipeline with a ``partition`` group."""
        from fedens.data import PARTITIONS

        return [PARTITIONS.schemas[cfg.partition.name]] if "partition" in self.groups else []

    def resumable(self, cfg: DictConfig) -> str | None:
        """None if a run of ``cfg`` can resume from a checkpoint, else why not."""
        return f"the {self.name} pipeline does not checkpoint"

    def print_report(self, results: dict[str, Any], cfg: DictConfig) -> None:
        """The console table at the end of a run (default: none)."""

    def run(self, cfg: DictConfig, run: RunContext) -> dict[str, Any]:
        """Run the experiment; return results.json's content without the frame's sections
        (schema, experiment, seed, environment, the wall time)."""
        raise NotImplementedError


def register_pipeline(cls: type[Pipeline]) -> type[Pipeline]:
    """Class decorator: make a pipeline findable by its ``name``."""
    return PIPELINES.register(cls.name)(cls)
