"""Option log-likelihoods kept on disk, so sweeps over ε, seeds and combiners re-read a
language model's answers instead of recomputing them. One SQLite file (a site's own, when the
expert runs at a site); an entry's key is the sha256 of everything that determines its value:
the model file's sha256, the prompt template's settings and the question with its options."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def entry_key(model_id: str, template: Mapping[str, Any], question: str, options: tuple[str, ...]) -> str:
    """The sha256 naming one question's scores by ``model_id`` under ``template``."""
    text = json.dumps({"model": model_id, "template": dict(template), "question": question,
                       "options": list(options)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ScoreCache:
    """Summed option log-likelihoods by :func:`entry_key`, in the SQLite file ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, loglik BLOB NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached rows among ``keys``."""
        found: dict[str, np.ndarray] = {}
        with self._connect() as db:
            for at in range(0, len(keys), 500):  # SQLite's bound on query parameters
                chunk = keys[at:at + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob in db.execute(f"SELECT key, loglik FROM scores WHERE key IN ({marks})", chunk):
                    found[key] = np.frombuffer(blob, dtype=np.float64).copy()
        return found

    def put(self, rows: Mapping[str, np.ndarray]) -> None:
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO scores (key, loglik) VALUES (?, ?)",
                           [(k, np.asarray(v, dtype=np.float64).tobytes()) for k, v in rows.items()])
