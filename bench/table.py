"""``python -m bench.table [RESULTS]``: the Markdown tables of a benchmark's results.json
(default ``bench/results.json``), as bench/README.md shows them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _target(t: dict[str, Any]) -> str:
    return f"{t['direction']} {t['target']:,}: {'met' if t['met'] else '**missed**'}"


def _load(rows: dict[str, Any]) -> str:
    loads = sorted({x for r in rows.values() for x in r.get("load_1min", [])})
    return f"{loads[0]:.1f}–{loads[-1]:.1f}" if loads else "-"


def tables(results: dict[str, Any]) -> str:
    s, out = results["sections"], []
    out.append(f"{results['mode']} run of {results['date']} at commit {results['commit']}, "
               f"{results['cores']} cores, {results['duration_s'] / 60:.1f} min; load average "
               f"{' '.join(map(str, results['load_average_start']))} at the start, "
               f"{' '.join(map(str, results['load_average_end']))} at the end.\n")
    if g := s.get("gnmax"):
        out += [f"GNMax over {g['teachers']} teachers × {g['classes']} classes, {g['queries']:,} queries "
                f"(median of the repeats; 1-min load {_load(g['rows'])}):\n",
                "| release | queries / s | × numpy noisy argmax |", "| --- | ---: | ---: |"]
        out += [f"| {name} | {r['queries_per_s']:,.0f} | {r['ratio_to_baseline']:.2f} |"
                for name, r in g["rows"].items()]
        out.append(f"\nTarget {_target(g['target'])} (GNMax.release).\n")
    if a := s.get("pate_analysis"):
        out += [f"Data-dependent PATE analysis ({a['orders']} RDP orders; 1-min load "
                f"{_load(a['rows'])}):\n",
                "| analysis | queries | queries / s | × the per-query loop |", "| --- | ---: | ---: | ---: |"]
        out += [f"| {name} | {r['queries']:,} | {r['queries_per_s']:,.0f} | "
                f"{r.get('ratio_to_loop', 1.0):.1f} |" for name, r in a["rows"].items()]
        out.append(f"\nTarget {_target(a['target'])} (the slower of the two ratios).\n")
    if d := s.get("dpsgd"):
        base = d["rows"]["non-private (baseline)"]["median_s"]
        out += [f"The quickstart's router ({d['trainable_parameters']:,} trainable parameters), "
                f"{d['records']} records, {d['epochs']} epochs, batch {d['batch_size']}; 1-min load "
                f"{_load(d['rows'])}:\n",
                "| training | ms / epoch | × non-private |", "| --- | ---: | ---: |"]
        out += [f"| {name} | {r['median_s'] / d['epochs'] * 1e3:.1f} | {r['median_s'] / base:.2f} |"
                for name, r in d["rows"].items()]
        out.append(f"\nTarget {_target(d['target'])}.\n")
    runs = [("the quickstart's digits task", f) for f in s.get("federation", {}).values()]
    runs += [("MNIST as a table", f) for f in s.get("scale", {}).values() if "sites" in f]
    for task, f in runs:
        out += [f"Federation on {task}, {f['sites']:,} sites × {f['rounds']} rounds, median of "
                f"{f['repeats']} "
                f"(1-min load {min(f['load_1min']):.1f}–{max(f['load_1min']):.1f}):\n",
                "| run | wall s | in the rounds, s | ms per site-round after round 1 | peak RSS, MB | "
                "test accuracy |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name in ("plain loop", "stock Flower", "fedens"):
            steady = f["per_site_round_s"][name]
            out.append(f"| {name} | {f['wall_s'][name]:.1f} | {f['in_rounds_s'][name]:.1f} | "
                       f"{'-' if steady is None else f'{steady * 1e3:.2f}'} | "
                       f"{f['peak_rss_mb'][name]:,.0f} | "
                       f"{f['test_accuracy'][name]:.3f} |")
        p = f["fedens_phases_s"]
        out.append(f"\nfedens / stock Flower {f['ratio_fedens_to_stock']:.2f}×; stock Flower / plain loop "
                   f"{f['ratio_stock_to_loop']:.2f}×. fedens' phases (s): process start "
                   f"{p['process_start_s']:.1f}, prepare {p['prepare_s']:.1f}, references "
                   f"{p['references_s']:.1f}, federation {p['federation_s']:.1f} (in the rounds "
                   f"{p['federation_in_rounds_s']:.1f}, engine start and stop "
                   f"{p['engine_start_stop_s']:.1f}), "
                   f"report {p['report_s']:.1f}. Beyond its model work (prepare, references): "
                   f"{f['fedens_beyond_model_work_s']:.1f} s, {f['target']['value']:.2f}× stock Flower; "
                   f"target {_target(f['target'])}.\n")
    if flat := s.get("scale", {}).get("flatness"):
        out.append(f"Per site-round from 100 to 1,000 sites: {flat['per_site_round_100_s'] * 1e3:.1f} → "
                   f"{flat['per_site_round_1000_s'] * 1e3:.1f} ms, a change of "
                   f"{flat['target']['value']:.0%}; target ≤ 25%: "
                   f"{'met' if flat['target']['met'] else '**missed**'}. fedens / stock Flower at 1,000 "
                   f"sites: {s['scale']['at_1000_sites']['target']['value']:.2f}×; target ≤ 1.1: "
                   f"{'met' if s['scale']['at_1000_sites']['target']['met'] else '**missed**'}.\n")
    return "\n".join(out)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    print(tables(json.loads(path.read_text())))
