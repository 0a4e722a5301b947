"""Composing a run's config from the package's Hydra groups, and the checks every pipeline shares:
the frame's own keys and which pipeline each chosen group option belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fedens.config_schema import ConfigError, Rule, Schema, integer

#: the Hydra config groups, shipped inside the package (``pip install`` carries them)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: config groups whose chosen option a pipeline must accept, and the key that names the option
GROUP_KEYS = {"data": "data.name", "partition": "partition.name", "experts": "experts.name",
              "combiner": "combiner.name", "privacy": "privacy.name", "federation": "federation.backend"}

FRAME_SCHEMA = Schema([
    Rule("name", lambda v, cfg: isinstance(v, str) and v.strip() != "" and v != "???",
         "a run name (set by the experiment preset)"),
    integer("seed", 0, note="the run's seed"),
])


def compose(overrides: list[str] | tuple[str, ...] = (), with_hydra: bool = False) -> DictConfig:
    """The config ``fedens run OVERRIDES`` would run (``with_hydra``: with Hydra's own section)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def chosen(cfg: DictConfig, group: str) -> Any:
    """The option chosen for ``group`` (the value of its naming key)."""
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, GROUP_KEYS[group])


def check_groups(cfg: DictConfig, pipeline: Any, pipelines: dict[str, Any]) -> None:
    """Every chosen group option is one ``pipeline`` takes; else one line naming the pipeline it
    belongs to and what this one takes."""
    for group, options in pipeline.groups.items():
        option = chosen(cfg, group)
        if option in options:
            continue
        owners = [name for name, other in pipelines.items() if option in other.groups.get(group, ())]
        belongs = (f"belongs to the {' and '.join(owners)} pipeline" if owners
                   else "is not an option of any pipeline")
        raise ConfigError(f"{group}={option} {belongs}; the {pipeline.name} pipeline (experiment={cfg.name}) "
                          f"takes {group}={'|'.join(options)}")
