"""DP events and epsilon, computed by dp-accounting; nothing composed by hand."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import dp_accounting
from dp_accounting.rdp import RdpAccountant

ACCOUNTING_METHOD = "rdp"

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
        accountant: dp_accounting.PrivacyAccountant = RdpAccountant()
    elif method == "pld":
        from dp_accounting.pld import PLDAccountant

        accountant = PLDAccountant()
    else:
        raise ValueError(f"accounting method must be 'rdp' or 'pld', got {method!r}")
    if method == "rdp":  # RDP adds up: compute each distinct event once, times its count
        distinct: dict[str, list] = {}
        for event in events:
            distinct.setdefault(repr(event), [event, 0])[1] += 1
        for event, count in distinct.values():
            accountant.compose(event, count)
    else:
        for event in events:
            accountant.compose(event)
    return float(accountant.get_epsilon(delta))


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
    return float(
        dp_accounting.calibrate_dp_mechanism(
            RdpAccountant,
            lambda sigma: dpsgd_event(sigma, sample_rate, steps),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    )
