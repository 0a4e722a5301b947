"""Privacy: DP events and their accounting (dp-accounting), ledgers, Opacus glue.

Each name is imported from its module when first used (:mod:`fedens.lazy`), so a site's
ledger opens without loading the PATE analysis, and a roll call loads none of it.
"""

from fedens.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["calibrate_dpsgd_noise", "dpsgd_event", "epsilon_from_events"], "accounting"),
    **dict.fromkeys(["BudgetExceeded", "LedgerUnreadable", "UnknownReservation"], "errors"),
    "PrivacyLedger": "ledger",
    **dict.fromkeys(["MECHANISMS", "ConfidentGNMax", "GNMax", "LNMax", "Mechanism", "NoisyLinearPool",
                     "Release", "WeightedGNMax", "make_mechanism", "register_mechanism"], "mechanisms"),
    **dict.fromkeys(["PateAnalysis", "analyze_pate", "confident_gnmax_rdp_data_dependent",
                     "gnmax_log_prob_not_top", "gnmax_prob_not_top", "gnmax_rdp_data_dependent",
                     "gnmax_rdp_data_independent", "rdp_to_epsilon", "threshold_rdp_data_dependent",
                     "threshold_rdp_data_independent"],
                    "pate_analysis"),
    **dict.fromkeys(["SmoothSensitivityRelease", "gnss_rdp", "release_data_dependent_rdp",
                     "smooth_sensitivity_of_rdp"], "smooth_sensitivity"),
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
