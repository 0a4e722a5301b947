"""Offline datasets and their division into sites (names imported on first use: :mod:`fedens.lazy`)."""

from fedens.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["Split", "TaskData", "load_task"], "datasets"),
    **dict.fromkeys(["PARTITIONS", "dirichlet_partition"], "partition"),
    **dict.fromkeys(["DataSchemaError", "TaskSchema"], "schema"),
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
