"""Composing a run's config from the package's Hydra groups, and the checks every pipeline shares:
the frame's own keys and which pipeline each chosen group option belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedens.config_schema import ConfigError, Rule, Schema, integer
from fedens.runs.trackers import tracker_problem

# ${len:${experts.members}}: a count that follows a list in the config (experts=own).
if not OmegaConf.has_resolver("len"):
    OmegaConf.register_new_resolver("len", lambda items: len(items))

#: the Hydra config groups, shipped inside the package (``pip install`` carries them)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: config groups whose chosen option a pipeline must accept, and the key that names the option
GROUP_KEYS = {"data": "data.name", "partition": "partition.name", "experts": "experts.name",
              "combiner": "combiner.name", "privacy": "privacy.name", "federation": "federation.backend"}

FRAME_SCHEMA = Schema([
    Rule("name", lambda v, cfg: isinstance(v, str) and v.strip() != "" and v != "???",
         "a run name (set by the experiment preset)"),
    integer("seed", 0, note="the run's seed"),
    Rule("tracker", lambda v, cfg: not tracker_problem(v), lambda cfg: tracker_problem(cfg.tracker)),
])


def compose(overrides: list[str] | tuple[str, ...] = (), with_hydra: bool = False) -> DictConfig:
    """The config ``fedens run OVERRIDES`` would run (``with_hydra``: with Hydra's own section)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs ``fedens run -m OVERRIDES`` launches, each as its overrides: Hydra's basic sweeper
    (the product of the comma-separated and range sweeps), asked without launching anything."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def unknown_key(key: str, given: str) -> str:
    return (f"unknown config key {key!r} (in {given!r}); see the keys with `fedens run --cfg job` "
            "(+key=value adds keys only to an empty mapping, such as federation.strategy.params)")


def check_additions(overrides: list[str]) -> None:
    """Every key ``+key=value`` (or ``++key=value``) adds is one fedens reads: it exists without the
    addition, or it goes into a mapping the shipped config leaves empty (a strategy's parameters).
    Hydra itself would add any key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and not o.key_or_group.startswith("hydra")
             and not (CONF_DIR / o.key_or_group).is_dir()]  # +group=option: Hydra checks those
    if not added:
        return
    base = compose([o.input_line for o in parsed if o not in added and o.input_line])
    absent = object()
    for o in added:
        parts = o.key_or_group.split(".")
        known = [OmegaConf.select(base, ".".join(parts[:n]), default=absent)
                 for n in range(len(parts), 0, -1)]
        nearest = next((node for node in known if node is not absent), base)
        if known[0] is absent and not (isinstance(nearest, DictConfig) and len(nearest) == 0):
            raise ConfigError(unknown_key(o.key_or_group, o.input_line or o.key_or_group))


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
