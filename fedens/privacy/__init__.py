"""Privacy: DP events and their accounting (dp-accounting), ledgers, Opacus glue."""

from fedens.privacy.accounting import (
    calibrate_dpsgd_noise,
    dpsgd_event,
    epsilon_from_events,
)
from fedens.privacy.ledger import BudgetExceeded, LedgerUnreadable, PrivacyLedger, UnknownReservation
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
from fedens.privacy.pate_analysis import (
    PateAnalysis,
    analyze_pate,
    confident_gnmax_rdp_data_dependent,
    gnmax_log_prob_not_top,
    gnmax_prob_not_top,
    gnmax_rdp_data_dependent,
    gnmax_rdp_data_independent,
    rdp_to_epsilon,
    threshold_rdp_data_dependent,
    threshold_rdp_data_independent,
)
from fedens.privacy.smooth_sensitivity import (
    SmoothSensitivityRelease,
    gnss_rdp,
    release_data_dependent_rdp,
    smooth_sensitivity_of_rdp,
)

__all__ = [
    "BudgetExceeded",
    "LedgerUnreadable",
    "PrivacyLedger",
    "UnknownReservation",
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
    "PateAnalysis",
    "analyze_pate",
    "confident_gnmax_rdp_data_dependent",
    "gnmax_log_prob_not_top",
    "gnmax_prob_not_top",
    "gnmax_rdp_data_dependent",
    "gnmax_rdp_data_independent",
    "rdp_to_epsilon",
    "threshold_rdp_data_dependent",
    "threshold_rdp_data_independent",
    "SmoothSensitivityRelease",
    "gnss_rdp",
    "release_data_dependent_rdp",
    "smooth_sensitivity_of_rdp",
]
