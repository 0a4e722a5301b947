"""Site-level DP for combiner training: Flower's own DP wrappers, chosen by config.

Neighbouring federations differ in one whole site. Each round, every site's
update is clipped to an L2 norm (on the server or at the site) and Gaussian
noise is added to the sum; fedens keeps its strategies plain and puts
Flower's ``DifferentialPrivacy*Clipping`` wrappers around them. The wrappers
need equal site weights (a site's weight would otherwise leak its size and
change the sensitivity), so sites report ``site-weight = 1`` and FedAvg
weights by it.

Epsilon over the rounds is computed by dp-accounting (every site takes part
in every round, so there is no sampling amplification); for fixed clipping
Flower's own accountant is run beside it as a cross-check. For adaptive
clipping, ``noise_multiplier`` is the *total* one (Andrew et al. 2021): Flower
splits it between the update and the clipped-count query.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

MODES = ("none", "server_fixed", "client_fixed", "server_adaptive", "client_adaptive")
CONFIG_KEY = "site-dp"  # train-config key telling sites which clipping mod applies
WEIGHT_KEY = "site-weight"


def wrap_strategy(
    strategy: Strategy,
    mode: str,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    num_sites: int,
    delta: float,
    clipped_count_stddev: float | None = None,
) -> Strategy:
    """``strategy`` inside the Flower DP wrapper for ``mode`` (``"none"``: unchanged)."""
    if mode not in MODES:
        raise ValueError(f"site-level DP mode must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return strategy
    if noise_multiplier <= 0:
        raise ValueError(f"site-level noise_multiplier must be > 0, got {noise_multiplier}")
    if clipping_norm <= 0:
        raise ValueError(f"site-level clipping_norm must be > 0, got {clipping_norm}")
    if mode.endswith("fixed"):
        from flwr.serverapp import PrivacyConfig, RdpAccountant  # Flower 1.41's accountant
        from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

        accountant = RdpAccountant(PrivacyConfig(
            target_delta=delta,
            population_size=num_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        ))
        wrapper = (DifferentialPrivacyServerSideFixedClipping if mode == "server_fixed"
                   else DifferentialPrivacyClientSideFixedClipping)
        return wrapper(strategy, noise_multiplier, clipping_norm, num_sites, accountant=accountant)
    wrapper = (DifferentialPrivacyServerSideAdaptiveClipping if mode == "server_adaptive"
               else DifferentialPrivacyClientSideAdaptiveClipping)
    return wrapper(strategy, noise_multiplier, num_sites, initial_clipping_norm=clipping_norm,
                   clipped_count_stddev=clipped_count_stddev)


def adaptive_noise_problem(
    noise_multiplier: float, num_sites: int, clipped_count_stddev: float | None
) -> str:
    """Why Flower's adaptive clipping cannot split ``noise_multiplier`` (empty if it can)."""
    stddev = num_sites / 20 if clipped_count_stddev is None else clipped_count_stddev
    if noise_multiplier >= 2 * stddev:
        return (f"needs clipped_count_stddev > noise_multiplier / 2 = {noise_multiplier / 2:g}, "
                f"got {stddev:g}{' (the default, sites / 20)' if clipped_count_stddev is None else ''}")
    return ""


def site_level_report(
    strategy: Strategy, mode: str, *, noise_multiplier: float, rounds: int, delta: float
) -> dict[str, Any]:
    """Epsilon of the site-level guarantee after ``rounds`` noised aggregations."""
    if mode == "none":
        return {"mode": mode, "epsilon": None, "delta": delta}
    import dp_accounting  # the coordinator's report: a site's ClientApp does not load it

    from fedens.privacy import epsilon_from_events

    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
    report: dict[str, Any] = {
        "mode": mode,
        "epsilon": epsilon_from_events([event], delta),
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "rounds": rounds,
        "accounting": "rdp (dp-accounting), no sampling amplification",
        "event": dp_accounting.SelfComposedDpEvent.__name__,
    }
    spent = getattr(strategy, "privacy_spent", lambda: None)()
    if spent is not None:  # Flower's own accountant (fixed clipping only)
        report["flower_epsilon"] = spent.epsilon
        report["flower_releases"] = spent.num_releases
    return report


def site_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: apply Flower's clipping mod that the round's train config asks for."""
    configs = list(msg.content.config_records.values()) if msg.has_content() else []
    mode = configs[0].get(CONFIG_KEY, "none") if len(configs) == 1 else "none"
    if mode == "client_fixed":
        return fixedclipping_mod(msg, context, call_next)
    if mode == "client_adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)
