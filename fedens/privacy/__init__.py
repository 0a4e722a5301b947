"""Privacy: DP events and their accounting (dp-accounting), ledgers, Opacus glue."""

from fedens.privacy.accounting import (
    calibrate_dpsgd_noise,
    dpsgd_event,
    epsilon_from_events,
)
from fedens.privacy.ledger import BudgetExceeded, PrivacyLedger
from fedens.privacy.mechanisms import (
    MECHANISMS,
    ConfidentGNMax,
    GNMax,
    LNMax,
    Mechanism,
    NoisyLinearPool,
    Release,
    WeightedGNMax,
    make_mechanism,
    register_mechanism,
)

__all__ = [
    "BudgetExceeded",
    "PrivacyLedger",
    "calibrate_dpsgd_noise",
    "dpsgd_event",
    "epsilon_from_events",
    "MECHANISMS",
    "ConfidentGNMax",
    "GNMax",
    "LNMax",
    "Mechanism",
    "NoisyLinearPool",
    "Release",
    "WeightedGNMax",
    "make_mechanism",
    "register_mechanism",
]
