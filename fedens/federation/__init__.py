"""Flower apps (Message API) by protocol, and the engines that run them.

``ensemble/``: the sites learn a combiner (DP-SGD rounds under a Flower strategy, or one
noisy-histogram release), then personalise it. ``votes/``: PATE-style private labelling (query,
vote histograms, noisy release, charge). Shared by both: ``site.py`` (the site side of every
message: preamble and ledger guard), ``grid.py`` (sites by number, failures recorded),
``shipping.py`` (the public files, shipped and checked by sha256), ``layout.py`` (run settings,
paths, error codes), ``simulation.py`` and ``deployment.py`` (Flower's two engines).
"""
