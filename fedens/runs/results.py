"""What every run reports: ``results.json`` (the DESIGN.md schema, written last and atomically),
per-round CSV, the run's environment, and the sites' ledger summaries."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedens.federation import layout as L
from fedens.files import write_atomic
from fedens.privacy import PrivacyLedger
from fedens.privacy.accounting import RDP_CONVERSION
from fedens.privacy.release_keys import software_versions

SCHEMA_VERSION = 1


def environment() -> dict[str, Any]:
    """The package versions and the git commit of fedens' source (None outside a checkout)."""
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "fedens"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, False
    return {"packages": software_versions(), "git_commit": commit,
            "git_uncommitted_changes": dirty if commit else None, "rdp_conversion": RDP_CONVERSION}


def write_results(run_dir: Path, results: Mapping[str, Any]) -> Path:
    path = run_dir / "results.json"
    write_atomic(path, json.dumps(results, indent=2))
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` (one dict per round, the keys of all rows) as CSV."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def site_ledger_summaries(run_dir: Path, num_sites: int, budget: float) -> dict[str, dict[str, Any]]:
    """Per site: epsilon spent (None if nothing was released), its worst case, budget, events and
    refusals, read (read-only) from the sites' ledgers in the run directory (simulation)."""
    per_site: dict[str, dict[str, Any]] = {}
    for site in range(num_sites):
        path = L.site_dir(run_dir, site) / "ledger.sqlite"
        if not path.is_file():
            per_site[str(site)] = {"epsilon": None, "budget": float(budget)}
            continue
        ledger = PrivacyLedger.read(path)
        s = ledger.summary()
        ledger.close()
        per_site[str(site)] = {"epsilon": s["epsilon"] if s["events"] else None,
                               "epsilon_worst_case": s["epsilon_worst_case"] if s["events"] else None,
                               "budget": s["budget"],
                               "events": s["events"], "refusals": s["refusals"],
                               "queries_refused": s["queries_refused"]}
    return per_site


def epsilon_max(per_site: Mapping[str, Mapping[str, Any]], key: str = "epsilon") -> float | None:
    """The largest ``key`` over the sites that released anything (None: none did)."""
    spent = [s[key] for s in per_site.values() if s.get(key) is not None]
    return max(spent) if spent else None
