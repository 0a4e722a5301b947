"""fedens: federated, differentially private ensembles.

Layers (dependencies point one way):
``data, experts -> combiners -> privacy -> federation -> experiment -> cli``.
"""

import os

# A privacy framework phones nobody: switch Flower's telemetry off before any
# Flower module is imported by a fedens module.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

__version__ = "0.1.0"
