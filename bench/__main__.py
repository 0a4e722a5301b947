"""``scripts/bench [--quick] [--repeats N] [SECTION ...]``: the benchmark's sections, their
results in one JSON file (``bench/results.json`` for the full run, ``outputs/bench/quick.json``
for ``--quick``) and a line per figure on the way."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import federation, privacy
from bench.measure import load_average, say

SECTIONS: dict[str, Callable[[bool, int], dict[str, Any]]] = {
    "gnmax": privacy.gnmax,
    "pate_analysis": privacy.pate_analysis,
    "dpsgd": privacy.dpsgd,
    "federation": federation.federation,
    "scale": federation.scale,
}
QUICK_SKIPS = ("scale",)  # minutes even at its smallest (the MNIST references alone)
ROOT = Path(__file__).resolve().parent.parent


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("fedens", "flwr", "torch", "opacus", "dp-accounting", "numpy")
    return {"python": platform.python_version(), **{name: version(name) for name in names}}


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, one federation repeat, no scale section unless named")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per figure (default 3)")
    parser.add_argument("--out", type=Path, help="where the JSON goes")
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"any of {', '.join(SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; expected one of {', '.join(SECTIONS)} "
                     "(or `scripts/bench message` / `scripts/bench lm`)")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    out = args.out or (ROOT / "outputs" / "bench" / "quick.json" if args.quick
                       else ROOT / "bench" / "results.json")
    chosen = args.sections or [s for s in SECTIONS if not (args.quick and s in QUICK_SKIPS)]
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    warnings.simplefilter("ignore")  # Opacus' secure-RNG note and the like; the figures are the output
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full", "repeats": args.repeats,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
        "cores": os.cpu_count(), "versions": _versions(), "load_average_start": load_average(),
        "sections": {},
    }
    say(f"scripts/bench{' --quick' if args.quick else ''}: {', '.join(chosen)}; medians of interleaved "
        f"repeats, ratios to a baseline in the same run ({os.cpu_count()} cores, load "
        f"{' '.join(map(str, load_average()))})")
    for name in chosen:
        say(f"{name}:")
        results["sections"][name] = SECTIONS[name](args.quick, args.repeats)
    results["load_average_end"] = load_average()
    results["duration_s"] = time.monotonic() - started
    from fedens.files import write_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(results, indent=1) + "\n")
    say(f"results  {out}  ({results['duration_s']:.0f} s; load at the end "
        f"{' '.join(map(str, results['load_average_end']))})")
    for name, section in results["sections"].items():
        for label, target in _targets(name, section):
            say(f"  target {label}: {target['value']:,.2f} {target['direction']} {target['target']:,} "
                f"{'met' if target['met'] else 'MISSED'}")
    return 0


def _targets(name: str, section: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if "target" in section:
        return [(name, section["target"])]
    return [(f"{name} {key}", value["target"]) for key, value in section.items()
            if isinstance(value, dict) and "target" in value]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
