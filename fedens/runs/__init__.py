"""The run frame, written once: compose and validate a config, the run directory, seeds, the
simulation|deployment switch, results.json, the console, ledger summaries. Pipelines
(``fedens.pipelines``) plug into it through :data:`PIPELINES`."""

from fedens.config_schema import ConfigError
from fedens.runs.config import compose
from fedens.runs.frame import FederationFailed, federation_failure, run, validate
from fedens.runs.pipeline import PIPELINES, Pipeline, RunContext, register_pipeline

__all__ = ["ConfigError", "FederationFailed", "PIPELINES", "Pipeline", "RunContext", "compose",
           "federation_failure", "register_pipeline", "run", "validate"]
