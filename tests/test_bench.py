"""scripts/bench's sections run, agree with what they compare against, and write what the
table reads; no time is asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "FLWR_TELEMETRY_ENABLED": "0"}, timeout=300)


def test_quick_privacy_sections_write_results_the_table_reads(tmp_path):
    out = tmp_path / "quick.json"
    done = bench("--quick", "--repeats", "1", "--out", str(out), "gnmax", "pate_analysis", "dpsgd")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["mode"] == "quick" and set(results["sections"]) == {"gnmax", "pate_analysis", "dpsgd"}
    gnmax = results["sections"]["gnmax"]["rows"]
    assert all(r["queries_per_s"] > 0 and len(r["repeats_s"]) == 1 for r in gnmax.values())
    # the vectorised and the per-query analyses gave the same epsilon before either was timed
    analysis = results["sections"]["pate_analysis"]
    assert analysis["rows"]["GNMax, analyze_pate"]["ratio_to_loop"] > 0
    dpsgd = results["sections"]["dpsgd"]
    assert set(dpsgd["rows"]) == {"non-private (baseline)", "Opacus DP-SGD"} and dpsgd["records"] == 809
    for section in results["sections"].values():
        assert section["target"]["direction"] in (">=", "<=") and isinstance(section["target"]["met"], bool)
    assert "target gnmax" in done.stdout
    table = subprocess.run([sys.executable, "-m", "bench.table", str(out)], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    assert "| GNMax.release |" in table and "| Opacus DP-SGD |" in table


def test_an_unknown_section_or_repeat_count_is_one_line_and_exit_2(tmp_path):
    for args, named in ((["gnmx"], "'gnmx'"), (["--repeats", "0"], "--repeats must be >= 1, got 0")):
        done = bench("--out", str(tmp_path / "never.json"), *args)
        assert done.returncode == 2 and named in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "never.json").exists()
