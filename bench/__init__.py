"""fedens' benchmark (``scripts/bench``): every figure a ratio against a baseline measured in the
same run, the median of interleaved repeats, with the load average beside it."""
