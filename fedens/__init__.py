"""fedens: federated, differentially private ensembles.

Layers (dependencies point one way; ``tests/test_layers.py`` checks it):
``registry, files, config_schema, lazy -> data, experts -> combiners -> privacy -> federation -> runs
-> pipelines -> cli, flower_app``. ``fedens.run`` (below) is the Python entry: the frame with every pipeline
registered.
"""

import os
from importlib import metadata
from typing import Any

# A privacy framework phones nobody: switch Flower's telemetry off before any
# Flower module is imported by a fedens module.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

try:
    __version__ = metadata.version("fedens")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.1.0"


def compose(overrides: Any = ()) -> Any:
    """The config ``fedens run OVERRIDES`` would run, e.g. ``compose(["privacy.epsilon=4"])``."""
    from fedens.runs import compose as compose_config

    return compose_config(list(overrides))


def run(cfg: Any = (), run_dir: Any = None, resume: bool = False) -> dict[str, Any]:
    """Run one experiment and return its results (what ``results.json`` holds). ``cfg`` is a
    config from :func:`compose` or the overrides themselves, as ``fedens run`` takes them.

    Examples
    --------
    >>> import fedens                                                    # doctest: +SKIP
    >>> results = fedens.run(["federation.num_rounds=2"], run_dir="outputs/try")
    >>> results["metrics"]["test_accuracy"], results["private_data"]["public_only_accuracy"]
    """
    import fedens.pipelines  # noqa: F401  (registers every pipeline)
    from fedens.runs import run as run_frame

    if isinstance(cfg, (list, tuple)):
        cfg = compose(cfg)
    return run_frame(cfg, run_dir=run_dir, resume=resume)


def validate(cfg: Any) -> Any:
    """Check a config before anything runs (ConfigError naming the first bad key); returns the
    pipeline that would run it."""
    import fedens.pipelines  # noqa: F401  (registers every pipeline)
    from fedens.runs import validate as validate_frame

    return validate_frame(cfg)
