"""DP events and epsilon, computed by dp-accounting; nothing composed by hand."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator

import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from fedens.files import cache_root, sha256_bytes, write_atomic

ACCOUNTING_METHOD = "rdp"
#: how dp-accounting's RdpAccountant turns RDP into (epsilon, delta), named in every report
RDP_CONVERSION = ("dp-accounting RdpAccountant.get_epsilon: the minimum over RDP orders of the "
                  "conversion of Canonne, Kamath & Steinke 2020 (arXiv:2004.00010, Prop. 12)")

# dp-accounting logs (through absl) a warning for every fractional RDP order it
# drops from the minimisation; that is expected and would flood the console.
logging.getLogger("absl").setLevel(logging.ERROR)


def dpsgd_event(noise_multiplier: float, sample_rate: float, steps: int) -> dp_accounting.DpEvent:
    """DP-SGD with Poisson sampling: ``steps`` x PoissonSampled(q, Gaussian(sigma)).

    Neighbouring relation: add/remove one record of the site's training set;
    per-record gradients are clipped to ``max_grad_norm`` and the Gaussian
    noise has std ``noise_multiplier * max_grad_norm``.
    """
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        int(steps),
    )


def epsilon_from_events(
    events: Iterable[dp_accounting.DpEvent], delta: float, method: str = ACCOUNTING_METHOD
) -> float:
    """Epsilon at ``delta`` of the composition of ``events``, by dp-accounting.

    ``method="rdp"`` (the ledgers' method: fast, any number of events) or
    ``"pld"`` (privacy loss distributions: tighter, slower; Gaussian, Laplace
    and their Poisson-sampled and composed forms).
    """
    if method == "rdp":
        return _rdp_epsilon(events, delta)
    if method != "pld":
        raise ValueError(f"accounting method must be 'rdp' or 'pld', got {method!r}")
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant()
    for event in events:
        accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def _rdp_epsilon(events: Iterable[dp_accounting.DpEvent], delta: float) -> float:
    """What ``RdpAccountant`` computes for ``events`` (each distinct event composed once with its
    count), bit for bit: the same increments in the same order, each leaf's RDP vector computed
    by dp-accounting once per process (a site's ledger repeats the same few events every round)."""
    distinct: dict[str, list] = {}
    for event in events:
        distinct.setdefault(repr(event), [event, 0])[1] += 1
    total = np.zeros_like(_ORDERS)
    for event, count in distinct.values():
        for leaf, leaf_count in _leaves(event, count):
            total += _leaf_rdp(leaf, leaf_count)
    return float(compute_epsilon(_ORDERS, total, delta)[0])


_ORDERS = np.array(RdpAccountant().orders)


def _leaves(event: dp_accounting.DpEvent, count: int) -> Iterator[tuple[dp_accounting.DpEvent, int]]:
    """The (event, count) pairs ``RdpAccountant`` adds up for ``event`` composed ``count`` times,
    in its order: self-compositions multiply the count, compositions are walked in turn."""
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        yield from _leaves(event.event, event.count * count)
    elif isinstance(event, dp_accounting.ComposedDpEvent):
        for inner in event.events:
            yield from _leaves(inner, count)
    else:
        yield event, count


_LEAF_RDP: dict[tuple[str, int], np.ndarray] = {}


def _leaf_rdp(event: dp_accounting.DpEvent, count: int) -> np.ndarray:
    """RDP of ``event`` composed ``count`` times, by dp-accounting; kept by the event's repr
    (which names its type and every parameter exactly) for the life of the process."""
    key = (repr(event), count)
    if key not in _LEAF_RDP:
        accountant = RdpAccountant()
        accountant.compose(event, count)  # raises on an event dp-accounting's RDP cannot account
        if len(_LEAF_RDP) >= 4096:
            _LEAF_RDP.clear()
        _LEAF_RDP[key] = np.array(accountant.rdp, dtype=np.float64)
    return _LEAF_RDP[key]


def calibrate_dpsgd_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    """Smallest noise multiplier whose DP-SGD run of ``steps`` stays within ``target_epsilon``.

    Uses dp-accounting's own calibration, which never returns a parameter whose
    epsilon exceeds the target.

    Examples
    --------
    >>> sigma = calibrate_dpsgd_noise(8.0, 1e-5, sample_rate=0.1, steps=100)
    >>> epsilon_from_events([dpsgd_event(sigma, 0.1, 100)], 1e-5) <= 8.0
    True
    """
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
    return _calibrated_dpsgd_noise(float(target_epsilon), float(delta), float(sample_rate), int(steps))


_BRACKET, _TOLERANCE = (1e-3, 1.0), 1e-4  # dp-accounting's search: lower end and first guess; tolerance


@functools.lru_cache(maxsize=1024)
def _calibrated_dpsgd_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """dp-accounting's calibration, once per process for each setting and kept on disk
    (:func:`fedens.files.cache_root`), keyed by every input of the search and dp-accounting's
    version: the search takes about a second, and every site of every run would repeat it. The
    value is a function of public settings only; a wrong or unreadable file is recomputed."""
    key = {"dp_accounting": _dp_accounting_version(), "target_epsilon": repr(target_epsilon),
           "delta": repr(delta), "sample_rate": repr(sample_rate), "steps": steps,
           "bracket": list(_BRACKET), "tol": _TOLERANCE}
    path = cache_root() / "dpsgd_noise" / f"{sha256_bytes(json.dumps(key, sort_keys=True).encode())}.json"
    try:
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            return float(saved["noise_multiplier"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sigma = float(
        dp_accounting.calibrate_dp_mechanism(
            RdpAccountant,
            lambda sigma: dpsgd_event(sigma, sample_rate, steps),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(*_BRACKET),
            tol=_TOLERANCE,
        )
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"key": key, "noise_multiplier": sigma}))
    except OSError:  # a read-only cache costs the search next time, nothing else
        pass
    return sigma


@functools.cache
def _dp_accounting_version() -> str:
    from importlib.metadata import version

    return version("dp-accounting")
