"""Run the fedens apps on Flower's Deployment Engine: ``flwr run`` against a running SuperLink.

The SuperLink and one SuperNode per site are started beforehand (``scripts/pilot`` on
loopback, ``scripts/pilot --netns`` as separate hosts on one machine; each institution its
own SuperNode in a real pilot). The SuperLink connection is the ``[superlink.<name>]`` table
of ``$FLWR_HOME/config.toml``. The run's settings travel as a ``--run-config`` TOML file; the
ServerApp writes ``<run-dir>/federation/`` as in simulation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import tomli
import tomli_w

from fedens.federation import layout as L
from fedens.files import write_atomic

APP_DIR = Path(__file__).resolve().parents[2]  # this repository: pyproject.toml declares the apps
RUN_CONFIG_FILE = "run_config.toml"
LOG_FILE = "flwr.log"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DeploymentError(RuntimeError):
    """A deployment step failed; the message names the step, the run and Flower's reason."""


def flwr_env() -> dict[str, str]:
    """The environment for Flower's CLI: no telemetry, unbuffered output (it is streamed)."""
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def flwr_executable() -> str:
    """``flwr`` beside this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "flwr"
    found = str(beside) if beside.is_file() else shutil.which("flwr")
    if not found:
        raise DeploymentError("Flower's CLI `flwr` is not installed beside this Python nor on PATH")
    return found


def app_config_keys(app_dir: Path) -> set[str]:
    """The run settings the Flower App at ``app_dir`` declares (``[tool.flwr.app.config]``)."""
    pyproject = app_dir / "pyproject.toml"
    try:
        app = tomli.loads(pyproject.read_text())["tool"]["flwr"]["app"]
    except (OSError, KeyError, tomli.TOMLDecodeError) as error:
        raise DeploymentError(f"{app_dir} is not a Flower App: no [tool.flwr.app] in {pyproject}"
                              f" ({type(error).__name__}: {error})") from None
    return set(app.get("config", {}))


def _one_line(text: str) -> str:
    text = _ANSI.sub("", text)
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("Using SuperLink:"))
    return " ".join(re.sub(r"[╭╮╰╯─│]", " ", text).split()) or "(no message)"


def _flwr_json(args: list[str], what: str) -> dict[str, Any]:
    """Run ``flwr <args> --format json``; its JSON answer, or DeploymentError naming ``what``."""
    done = subprocess.run([flwr_executable(), *args, "--format", "json"], capture_output=True,
                          text=True, env=flwr_env(), timeout=300)
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        answer = {"success": False, "error-message": done.stdout + done.stderr}
    if done.returncode != 0 or not answer.get("success"):
        raise DeploymentError(f"{what} failed: {_one_line(str(answer.get('error-message', '')))}")
    return answer


def write_run_config(settings: Mapping[str, Any], app_dir: Path) -> Path:
    """``settings`` as a ``--run-config`` TOML file in ``<run-dir>/federation``; every key must
    be declared in the app's ``[tool.flwr.app.config]`` (the SuperLink rejects others)."""
    undeclared = sorted(set(settings) - app_config_keys(app_dir))
    if undeclared:
        raise DeploymentError(f"run settings {undeclared} are not declared in "
                              f"{app_dir / 'pyproject.toml'} [tool.flwr.app.config]")
    path = L.federation_dir(settings[L.RUN_DIR]) / RUN_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, tomli_w.dumps(dict(settings)))
    return path


def _start_and_stream(args: list[str], log: TextIO, echo: Callable[[str], None], verbose: bool,
                      timeout: float) -> tuple[str | None, int | None]:
    """Run ``flwr run ... --stream``, its output into ``log``: the run id (None if it did not
    start) and flwr's exit code (None if ``timeout`` passed first)."""
    proc = subprocess.Popen([flwr_executable(), *args, "--stream"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=flwr_env())
    run_id: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            plain = _ANSI.sub("", line).rstrip()
            if not run_id and (started := re.match(r"Successfully started run (\d+)", plain)):
                run_id.append(started.group(1))
                echo(f"deployment  run {run_id[0]}; log {log.name}")
            elif verbose or plain.startswith("fedens "):
                echo(plain)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    code: int | None = None
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(timeout=10)
    return (run_id[0] if run_id else None), code


def run_in_deployment(
    settings: Mapping[str, Any],
    *,
    superlink: str,
    app_dir: str | Path | None = None,
    timeout: float = 3600.0,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> str:
    """Submit the fedens apps at ``app_dir`` with ``settings`` as run config to the SuperLink
    connection ``superlink`` and wait for the run to finish; returns its run id.

    The run's log goes to ``<run-dir>/federation/flwr.log``; ``echo`` gets fedens' own lines
    (every line if ``verbose``). Raises :class:`DeploymentError` with one line naming what
    failed: the SuperLink unreachable, the run refused, failed or past ``timeout`` seconds.

    Example (with a SuperLink ``pilot`` in ``$FLWR_HOME/config.toml``)::

        run_in_deployment(settings, superlink="pilot")  # then read <run-dir>/federation/rounds.json
    """
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    app = Path(app_dir or APP_DIR).resolve()
    run_config = write_run_config(settings, app)
    log_path = run_config.parent / LOG_FILE
    with log_path.open("w") as log:
        run_id, code = _start_and_stream(["run", str(app), superlink, "--run-config", str(run_config)],
                                         log, echo, verbose, timeout)
    if run_id is None:
        raise DeploymentError(f"starting the run on SuperLink {superlink!r} failed: "
                              f"{_one_line(log_path.read_text())}")
    if code is None:
        subprocess.run([flwr_executable(), "stop", run_id, superlink], capture_output=True,
                       env=flwr_env(), timeout=120)
        raise DeploymentError(f"run {run_id} on SuperLink {superlink!r} did not finish within "
                              f"{timeout:g} s; it was stopped")
    deadline = time.monotonic() + 60  # the log stream can end a moment before the status is final
    while True:
        run = _flwr_json(["ls", superlink, "--run-id", run_id],
                         f"reading the status of run {run_id}")["runs"][0]
        if run["status"].startswith("finished") or time.monotonic() > deadline:
            break
        time.sleep(1)
    if run["status"] != "finished:completed":
        raise DeploymentError(f"run {run_id} on SuperLink {superlink!r} ended {run['status']}: "
                              f"{_one_line(run['status-details'])} (log: {log_path})")
    return run_id
