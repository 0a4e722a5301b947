"""Federation overhead: a fedens quickstart run against a minimal stock Flower app training the
same router on the same sites (:mod:`bench.stock_flower`), and against the same local steps in a
plain loop; each a fresh process, interleaved, and fedens' own time broken down by the phases its
``results.json`` records (``timing.phases_s``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import say, verdict

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}


def _quickstart(num_sites: int, num_rounds: int) -> list[str]:
    """The quickstart at this size, every site training on all its records as the stock app's
    sites do (no records held back for the personalisation comparison, which is not run)."""
    return ["experiment=quickstart", f"federation.num_sites={num_sites}",
            f"federation.num_rounds={num_rounds}", "federation.personalization.holdout=0"]


def _stock_files(work: Path, num_sites: int, num_rounds: int) -> None:
    """The quickstart's own partition, experts' outputs and initial router, for the stock app."""
    from fedens.combiners import combiner_state
    from fedens.files import npz_bytes, torch_bytes, write_atomic
    from fedens.pipelines.ensemble import prepare
    from fedens.runs import compose

    prepared = prepare(compose(_quickstart(num_sites, num_rounds)), work / "prepared")
    task, P = prepared["task"], prepared["outputs"]["private"]
    (work / "stock").mkdir()
    for site, records in enumerate(prepared["sites"]):
        write_atomic(work / "stock" / f"site_{site}.npz",
                     npz_bytes(X=task.private.X[records], P=P[records], y=task.private.y[records]))
    write_atomic(work / "stock" / "test.npz", npz_bytes(X=task.test.X, P=prepared["outputs"]["test"],
                                                       y=task.test.y))
    write_atomic(work / "initial_combiner.pt", torch_bytes(combiner_state(prepared["initial"])))


def _timed(args: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, env=ENV, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stdout


def overhead(num_sites: int, num_rounds: int, repeats: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fedens-bench-federation-"))
    py = sys.executable
    try:
        _stock_files(work, num_sites, num_rounds)
        runs: dict[str, list[dict[str, Any]]] = {"plain loop": [], "stock Flower": [], "fedens": []}
        loads = []
        for k in range(repeats):  # interleaved: a change in load hits every case alike
            loads.append(os.getloadavg()[0])
            for kind, name in (("loop", "plain loop"), ("flower", "stock Flower")):
                seconds, out = _timed([py, "-m", "bench.stock_flower", kind, str(work), str(num_sites),
                                       str(num_rounds)])
                runs[name].append({"wall_s": seconds, **json.loads(out.strip().splitlines()[-1])})
            run_dir = work / f"fedens-{k}"
            seconds, _ = _timed([py, "-m", "fedens", "run", *_quickstart(num_sites, num_rounds),
                                 f"hydra.run.dir={run_dir}"])
            results = json.loads((run_dir / "results.json").read_text())
            phases = results["timing"]["phases_s"]
            runs["fedens"].append({
                "wall_s": seconds, "test_accuracy": results["metrics"]["test_accuracy"],
                "process_start_s": seconds - results["timing"]["wall_s"],  # interpreter, imports, Hydra
                **{f"{p}_s": v for p, v in phases.items()},
                "engine_start_stop_s": phases["federation"] - phases.get("federation_in_rounds", 0.0),
            })
            shutil.rmtree(run_dir)
        return _summary(num_sites, num_rounds, runs, loads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _summary(num_sites: int, num_rounds: int, runs: dict[str, list[dict[str, Any]]],
             loads: list[float]) -> dict[str, Any]:
    fedens, stock, loop = runs["fedens"], runs["stock Flower"], runs["plain loop"]
    breakdown = {key: _median(fedens, key) for key in fedens[0] if key.endswith("_s")}
    # fedens' own model work, which the stock app does not do: the experts and the initial router
    # (prepare) and the references every result is reported against (the non-private federation,
    # the baselines); everything else is the federation's cost
    model_work = breakdown["prepare_s"] + breakdown["references_s"]
    beyond = [r["wall_s"] - r["prepare_s"] - r["references_s"] for r in fedens]
    out = {
        "sites": num_sites, "rounds": num_rounds, "repeats": len(loads), "load_1min": loads,
        "wall_s": {name: _median(rows, "wall_s") for name, rows in runs.items()},
        "in_rounds_s": {"plain loop": _median(loop, "in_rounds_s"),
                        "stock Flower": _median(stock, "in_rounds_s"),
                        "fedens": breakdown.get("federation_in_rounds_s")},
        "test_accuracy": {name: _median(rows, "test_accuracy") for name, rows in runs.items()},
        "fedens_phases_s": breakdown,
        "fedens_model_work_s": model_work,
        "fedens_beyond_model_work_s": statistics.median(beyond),
        "repeats_s": {name: [round(r["wall_s"], 2) for r in rows] for name, rows in runs.items()},
    }
    stock_s = out["wall_s"]["stock Flower"]
    out["ratio_fedens_to_stock"] = out["wall_s"]["fedens"] / stock_s
    out["ratio_stock_to_loop"] = stock_s / out["wall_s"]["plain loop"]
    out["target"] = verdict(out["fedens_beyond_model_work_s"] / stock_s, 1.0, higher_is_better=False)
    say(f"  federation {num_sites} sites x {num_rounds} rounds (median of {len(loads)}): "
        + ", ".join(f"{name} {s:.1f} s" for name, s in out["wall_s"].items())
        + f"; fedens / stock {out['ratio_fedens_to_stock']:.2f} x, beyond its model work "
        f"{out['target']['value']:.2f} x")
    say("    fedens phases: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in breakdown.items()
                                         if k != "wall_s"))
    return out


def federation(quick: bool, repeats: int) -> dict[str, Any]:
    sizes = [(10, 2)] if quick else [(10, 5), (100, 5)]
    return {f"{n}_sites": overhead(n, r, 1 if quick else repeats) for n, r in sizes}
