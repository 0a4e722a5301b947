"""The ``fedens`` command.

``fedens run [hydra overrides]`` runs an experiment (a Hydra app: ``key=value``,
``-m`` for multirun, ``--cfg job`` ...); ``fedens run resume=RUN_DIR`` continues
a run from its last checkpointed round; ``fedens ledger RUN_DIR [--json]``
prints what each site spent. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import NoReturn

USAGE = """usage: fedens run [KEY=VALUE ...] [-m] [hydra flags]
       fedens run resume=RUN_DIR
       fedens ledger RUN_DIR [--json]
       fedens summarize DIR
       fedens --version

  run        run an experiment (default: experiment=quickstart); `fedens run --help` for more
  ledger     epsilon spent and left per site of a run; `fedens ledger --help` for more
  summarize  the runs under DIR (e.g. a multirun sweep) as tables, and accuracy against epsilon"""


def run_help() -> str:
    """``fedens run --help``: the pipelines, presets and config groups, from the registries and
    the package's config folder."""
    from fedens.runs import PIPELINES
    from fedens.runs.config import GROUP_KEYS, group_options

    lines = ["usage: fedens run [KEY=VALUE ...] [-m] [--cfg job] [hydra flags]",
             "       fedens run resume=RUN_DIR", "",
             "Runs one fedens experiment (a Hydra app; outputs under ./outputs/<experiment>/<time>/).",
             "", "experiments (experiment=NAME):"]
    for preset in group_options("experiment"):
        lines.append(f"  {preset}")
    lines += ["", "pipelines (set by the experiment; each takes these group options):"]
    for name, pipeline in PIPELINES.items():
        lines.append(f"  {name}: " + "; ".join(f"{g}={'|'.join(o)}" for g, o in pipeline.groups.items()))
    lines += ["", "config groups (GROUP=OPTION):"]
    for group in GROUP_KEYS:
        lines.append(f"  {group}: {', '.join(group_options(group))}")
    lines += ["", "examples:", "  fedens run privacy.epsilon=1 federation.num_rounds=5",
              "  fedens run -m privacy.epsilon=1,8 seed=0,1,2", "  fedens run experiment=pate_mnist",
              "  fedens run --cfg job          # print the resolved config",
              "", "Bad input: one line naming the key, the value and what is allowed; exit code 2."]
    return "\n".join(lines)


def fail(message: str) -> NoReturn:
    print(f"fedens: {message}", file=sys.stderr)
    raise SystemExit(2)


def _explain_hydra_error(error: Exception, overrides: list[str]) -> str:
    """One line for a Hydra composition error: the key, the value, what is allowed."""
    text = str(error)
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, name = missing.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        allowed = ", ".join(options) if options else "(none found)"
        return f"{group}={name} is not a known {group} config; choose one of: {allowed}"
    unknown = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text
    )
    if unknown:
        from fedens.runs.config import unknown_key

        key = unknown.group(1)
        return unknown_key(key, next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key))
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _compose(overrides: list[str], with_hydra: bool = False):  # type: ignore[no-untyped-def]
    from fedens.runs import compose

    return compose(overrides, with_hydra=with_hydra)


def prevalidate(overrides: list[str], multirun: bool = False) -> None:
    """Compose and validate before Hydra creates a directory: nothing half-written, and a
    directory that holds a run is refused before Hydra overwrites its saved config. A multirun's
    every job is checked before the first starts (one bad job: the sweep does not start)."""
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from fedens.runs import ConfigError, validate
    from fedens.runs.config import check_additions, sweep_jobs
    from fedens.runs.rundir import check_creatable, check_run_dir

    try:
        jobs = sweep_jobs(overrides) if multirun else [overrides]
        check_additions(jobs[0])
    except ConfigError as error:
        fail(str(error))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        fail(_explain_hydra_error(error, overrides))
    for number, job in enumerate(jobs, start=1):
        where = f" (multirun job {number} of {len(jobs)}: {' '.join(job)})" if multirun else ""
        try:
            cfg = _compose(job, with_hydra=True)
            out_dir = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)).resolve()
            with open_dict(cfg):
                del cfg["hydra"]
            validate(cfg)
            if multirun:
                check_creatable(out_dir, "hydra.sweep.dir")
            else:
                check_run_dir(out_dir, resume=False)
        except ConfigError as error:
            fail(f"{error}{where}")
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            fail(_explain_hydra_error(error, job) + where)


def _run_or_exit(cfg, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """``run(cfg)``; bad config: one line, exit 2; a federation or deployment that failed: one
    line, exit 1."""
    import fedens
    from fedens.federation.deployment import DeploymentError
    from fedens.runs import ConfigError, FederationFailed

    try:
        fedens.run(cfg, **kwargs)
    except ConfigError as error:
        fail(str(error))
    except (DeploymentError, FederationFailed) as error:
        print(f"fedens: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def _hydra_task(cfg) -> None:  # type: ignore[no-untyped-def]
    _run_or_exit(cfg)


def resume_command(run_dir: str, others: list[str]) -> None:
    """``fedens run resume=RUN_DIR``: continue that run with its own saved config."""
    from omegaconf import DictConfig, OmegaConf

    if others:
        fail(f"resume takes no other overrides (got {' '.join(others)}): the run continues with the "
             "config saved in its .hydra/config.yaml")
    saved = Path(run_dir) / ".hydra" / "config.yaml"
    if not saved.is_file():
        fail(f"resume={run_dir}: no {saved}; expected a fedens run directory")
    def unreadable(why: str) -> NoReturn:
        fail(f"resume={run_dir}: {saved} is not a readable fedens config ({why}): expected the "
             ".hydra/config.yaml a fedens run saved")

    try:
        cfg = OmegaConf.load(saved)
        OmegaConf.resolve(cfg)
    except Exception as error:  # YAML or OmegaConf: the file is not a config
        unreadable(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    if not isinstance(cfg, DictConfig) or "name" not in cfg or not {"pipeline", "kind"} & set(cfg):
        unreadable("it has no name and pipeline keys")
    if "kind" in cfg and "pipeline" not in cfg:  # saved before pipelines were plugins
        cfg.pipeline = "pate" if cfg.pop("kind") == "pate" else "ensemble"
    _run_or_exit(cfg, run_dir=run_dir, resume=True)


def run_command(args: list[str]) -> None:
    import hydra

    resume = [a for a in args if a.startswith("resume=")]
    if resume and resume[0] != "resume=null":
        resume_command(resume[0].split("=", 1)[1], [a for a in args if a not in resume])
        return

    if any(a in ("-h", "--help") for a in args):
        import fedens.pipelines  # noqa: F401  (the registry the help lists)

        print(run_help())
        return
    multirun = any(a in ("-m", "--multirun") for a in args)
    informational = any(a.startswith("--cfg") or a in ("-c", "--info", "-i") for a in args)
    if not informational:
        import fedens.pipelines  # noqa: F401  (registers every pipeline)

        prevalidate([a for a in args if not a.startswith("-")], multirun)
    from fedens.runs.config import CONF_DIR

    sys.argv = ["fedens run", *args]
    main_fn = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
        _hydra_task
    )
    main_fn()


LEDGER_USAGE = """usage: fedens ledger RUN_DIR [--json]

  Epsilon spent and left per site, read from RUN_DIR/sites/site_<i>/ledger.sqlite
  (read-only: nothing is written to a ledger or beside it).

  --json   every site's summary and events, each event in dp-accounting's own
           serialisable form (DpEvent.to_named_tuple), so epsilon can be recomputed
  exit status: 0 every ledger read; 1 some ledger could not be read (named on stderr,
  the others still printed); 2 bad usage or no ledgers"""


def ledger_command(args: list[str]) -> None:
    from fedens.privacy import LedgerUnreadable, PrivacyLedger

    if any(a in ("-h", "--help") for a in args):
        print(LEDGER_USAGE)
        return
    as_json = "--json" in args
    paths = [a for a in args if a != "--json"]
    if len(paths) != 1 or paths[0].startswith("-"):
        fail("ledger takes one run directory: fedens ledger RUN_DIR [--json]")
    run_dir = Path(paths[0])
    ledgers = sorted(run_dir.glob("sites/site_*/ledger.sqlite"),
                     key=lambda p: (len(p.parent.name), p.parent.name))
    if not ledgers:
        fail(f"no site ledgers under {run_dir}/sites/*/ledger.sqlite: is it a fedens run directory?")
    report, unreadable = {}, []
    for path in ledgers:
        try:
            ledger = PrivacyLedger.read(path)
        except LedgerUnreadable as error:
            unreadable.append(f"{path.parent.name}: {error}")
            continue
        try:
            report[ledger.site] = {**ledger.summary(), "records": ledger.records()}
        except Exception as error:  # a file that opens but whose rows are damaged
            unreadable.append(f"{path.parent.name}: {path}: not a readable privacy ledger ({error})")
        finally:
            ledger.close()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_ledgers(report)
    for line in unreadable:
        print(f"fedens: {line}", file=sys.stderr)
    if unreadable:
        raise SystemExit(1)


def _print_ledgers(report: dict) -> None:  # type: ignore[type-arg]
    print(f"{'site':>6} {'epsilon':>9} {'worst case':>10} {'budget':>8} {'left':>8} {'events':>7} "
          f"{'refused':>8}  delta")
    for site, s in report.items():
        print(f"{site:>6} {s['epsilon']:9.3f} {s['epsilon_worst_case']:10.3f} {s['budget']:8g} "
              f"{s['remaining']:8.3f} {s['events']:7d} {s['refusals']:8d}  "
              f"{s['delta']:g} ({s['accounting']})")


SUMMARIZE_USAGE = """usage: fedens summarize DIR

  Tabulates every results.json under DIR (a multirun sweep, or outputs/): one row per run,
  then per setting (the overrides but the seed) the mean ± sd over its seeds. When the
  settings differ only in privacy.epsilon, also writes DIR/accuracy_vs_epsilon.png: the DP
  router (dense and top-k) against epsilon, with the public-only, non-private federation,
  uniform-mean and best-expert lines."""


def summarize_command(args: list[str]) -> None:
    from fedens.files import write_atomic
    from fedens.runs.summary import (
        collect,
        over_seeds,
        plot_against_epsilon,
        plottable,
        runs_table,
        seeds_table,
    )

    if any(a in ("-h", "--help") for a in args):
        print(SUMMARIZE_USAGE)
        return
    if len(args) != 1 or not Path(args[0]).is_dir():
        fail(f"summarize takes one directory that exists, got {' '.join(args) or 'nothing'}: "
             "fedens summarize DIR")
    root = Path(args[0])
    rows = collect(root)
    if not rows:
        fail(f"no results.json under {root}: expected a directory of fedens runs")
    summary = over_seeds(rows)
    print(runs_table(rows), "", "mean ± sd over seeds:", seeds_table(summary), sep="\n")
    if plottable(summary):
        write_atomic(root / "accuracy_vs_epsilon.png", plot_against_epsilon(summary))
        print(f"\nplot  {root / 'accuracy_vs_epsilon.png'}")


COMMANDS = {"run": run_command, "ledger": ledger_command, "summarize": summarize_command}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] in ("-V", "--version"):
        from fedens import __version__

        print(f"fedens {__version__}")
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}\n{USAGE}")
    COMMANDS[command](rest)
