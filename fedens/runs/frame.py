"""``run(cfg)``: one experiment, from a composed config to its ``results.json``.

The frame checks the config (its own keys, the pipeline's, the chosen components'; each chosen
group option must be one the pipeline takes), makes the run directory (refusing one that holds a
run), seeds, runs the pipeline and writes the report with the sections every run has: schema,
experiment, seed, pipeline, environment (package versions, git commit, the RDP conversion) and
the wall time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fedens.config_schema import ConfigError
from fedens.runs.config import FRAME_SCHEMA, check_groups
from fedens.runs.console import console
from fedens.runs.pipeline import PIPELINES, Pipeline, RunContext
from fedens.runs.results import SCHEMA_VERSION, environment, write_results
from fedens.runs.rundir import prepare_run_dir
from fedens.runs.trackers import open_tracker


class FederationFailed(RuntimeError):
    """The federation produced no result to report; the message says what failed."""


def federation_failure(run_dir: Path, wrote: str) -> FederationFailed:
    """Why the coordinator ended without writing ``wrote`` (the reason its ServerApp recorded)."""
    from fedens.federation import layout as L

    reason = L.failure_path(run_dir)
    said = reason.read_text().strip() if reason.is_file() else "no reason recorded (see the log above)"
    return FederationFailed(f"the federation ended without writing {wrote}: {said}")


def pipeline_of(cfg: DictConfig) -> Pipeline:
    """The registered pipeline ``cfg.pipeline`` names."""
    name = cfg.get("pipeline")
    if name not in PIPELINES:
        raise ConfigError(f"invalid pipeline={name!r}: expected one of {sorted(PIPELINES)} "
                          "(registered by fedens.pipelines)")
    return PIPELINES[name]()


def validate(cfg: DictConfig) -> Pipeline:
    """Raise :class:`ConfigError` for the first value out of range; return the pipeline."""
    FRAME_SCHEMA.check(cfg)
    pipeline = pipeline_of(cfg)
    check_groups(cfg, pipeline, {name: cls for name, cls in PIPELINES.items()})
    pipeline.validate(cfg)
    return pipeline


def run(cfg: DictConfig, run_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run one experiment and write its report; returns the results.json content.

    ``run_dir`` defaults to Hydra's run directory. ``resume``: continue the run in ``run_dir``
    from its last checkpoint (the sites' ledgers are kept and not charged twice).

    Raises
    ------
    ConfigError
        for a config value out of range, or a run directory that holds another run, before
        anything is written.
    FederationFailed
        if the federation produced nothing to report (no results.json is written).
    """
    pipeline = validate(cfg)
    if resume and (why := pipeline.resumable(cfg)):
        raise ConfigError(f"resume is not supported here: {why}")
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = prepare_run_dir(Path(run_dir).resolve(), resume)
    started = time.monotonic()
    import torch

    torch.manual_seed(cfg.seed)
    tracker = open_tracker(cfg.get("tracker", "none"), run_dir, cfg)
    track = tracker.log if tracker else (lambda row, step: None)
    context = RunContext(run_dir, resume, console.print, track)
    try:
        body = pipeline.run(cfg, context)
    except BaseException:
        if tracker:
            tracker.finish({}, ok=False)
        raise
    results = {"schema": SCHEMA_VERSION, "experiment": cfg.name, "seed": cfg.seed,
               "pipeline": pipeline.name, **body}
    results["timing"] = {"wall_s": time.monotonic() - started, **body.get("timing", {}),
                         **({"phases_s": context.phases} if context.phases else {})}
    results["environment"] = environment()
    path = write_results(run_dir, results)
    if tracker:
        tracker.finish(results)
    pipeline.print_report(results, cfg)
    console.print(f"results  {path}  ({results['timing']['wall_s']:.1f} s)")
    return results
