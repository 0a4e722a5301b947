"""The pipelines, one module each, registered by name in :data:`fedens.runs.PIPELINES` when
this package is imported: ``ensemble`` (the quickstart: shared experts, private data, a
federated combiner), ``pate`` (private experts: PATE across sites) and ``private_icl`` (prompted
language-model teachers at the sites: PromptPATE / DP-ICL). A pipeline never imports
another pipeline; a new one is a module here, its config presets and its experiment README."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
