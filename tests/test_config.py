"""Every config group option composes and passes validation."""

from pathlib import Path

import pytest

from fedens import validate
from fedens.runs import ConfigError
from fedens.runs.config import CONF_DIR

GROUPS = ["data", "partition", "experts", "combiner", "privacy", "federation", "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_every_group_has_an_option():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


PRESETS = [p.stem for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))]


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_option_composes(compose, group, option):
    cfg = compose(f"{group}={option}")
    assert cfg.name != "???" and group in cfg or group == "experiment"


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_validates(compose, preset):
    cfg = compose(f"experiment={preset}")
    validate(cfg)
    assert cfg.name == preset


def test_defaults_are_the_quickstart(compose):
    cfg = compose()
    assert cfg.name == "quickstart"
    assert (cfg.federation.num_sites, cfg.federation.num_rounds) == (10, 10)
    assert (cfg.privacy.epsilon, cfg.privacy.delta) == (8.0, 1e-5)
    assert cfg.partition.alpha == 0.5 and cfg.experts.num_experts == 10
    assert cfg.data.shift == "scanners"  # the sites' records are not the public split's population


def test_the_clean_preset_is_the_quickstart_without_the_shift(compose):
    from omegaconf import OmegaConf

    quickstart = OmegaConf.to_container(compose(), resolve=True)
    clean = OmegaConf.to_container(compose("experiment=clean"), resolve=True)
    assert clean.pop("name") == "clean" and quickstart.pop("name") == "quickstart"
    assert clean["data"].pop("shift") == "none" and quickstart["data"].pop("shift") == "scanners"
    assert clean["combiner"].pop("pretrain_epochs") == 20
    quickstart["combiner"].pop("pretrain_epochs")
    assert clean == quickstart


@pytest.mark.parametrize(
    "override, key",
    [("federation.min_sites=11", "federation.min_sites"),
     ("data.public_fraction=0.8", "data.test_fraction"),
     ("privacy.delta=1", "privacy.delta"),
     ("combiner.lr=0", "combiner.lr"),
     ("federation.num_rounds=1.5", "federation.num_rounds"),
     ("privacy.site_level.mode=local", "privacy.site_level.mode"),
     ("privacy.site_level.mode=server_adaptive", "privacy.site_level.clipped_count_stddev"),
     ("federation.strategy.name=FedFoo", "federation.strategy.name"),
     ("+federation.strategy.params.mu=1", "federation.strategy.params"),
     ("federation.inject_faults=3:x:raise", "federation.inject_faults"),
     ("federation.inject_faults=10:1:hang", "federation.inject_faults"),
     ("federation.min_replies=0", "federation.min_replies"),
     ("federation.round_timeout=0", "federation.round_timeout")],
)
def test_validation_names_the_key(compose, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(override))


def test_the_configs_ship_inside_the_package():
    import fedens

    assert CONF_DIR == Path(fedens.__file__).resolve().parent / "conf"
    assert (CONF_DIR / "config.yaml").is_file()


@pytest.mark.parametrize("override", ["partition=iid", "partition=dirichlet", "combiner=cascade",
                                      "federation=deployment"])
def test_a_group_option_the_quickstart_takes_validates(compose, override):
    validate(compose(override))


@pytest.mark.parametrize("overrides, line", [
    (["experts=teacher_cnns"], "experts=teacher_cnns belongs to the pate pipeline; the ensemble pipeline "
                               "(experiment=quickstart) takes experts=mixed_families"),
    (["privacy=confident_gnmax"], "privacy=confident_gnmax belongs to the pate pipeline; the ensemble "
                                  "pipeline (experiment=quickstart) takes privacy=dpsgd"),
    (["data=mnist"], "data=mnist belongs to the pate pipeline"),
    (["combiner=student"], "combiner=student belongs to the pate pipeline"),
    (["experiment=pate_mnist", "federation=deployment"],
     "federation=deployment belongs to the ensemble pipeline; the pate pipeline (experiment=pate_mnist) "
     "takes federation=simulation"),
    (["experiment=pate_mnist", "combiner=gated_ensemble"], "combiner=gated_ensemble belongs to the "
                                                           "ensemble pipeline"),
])
def test_a_group_option_of_another_pipeline_is_refused_naming_it(compose, overrides, line):
    with pytest.raises(ConfigError) as raised:
        validate(compose(*overrides))
    assert str(raised.value).startswith(line)


@pytest.mark.parametrize("override, key", [("seed=-1", "seed"), ("seed=abc", "seed"),
                                           ("experts.families=[foo]", "experts.families"),
                                           ("federation.num_cpus=abc", "federation.num_cpus"),
                                           ("pipeline=nope", "pipeline")])
def test_more_bad_values_are_named(compose, override, key):
    with pytest.raises(ConfigError, match=f"invalid {key}="):
        validate(compose(override))
