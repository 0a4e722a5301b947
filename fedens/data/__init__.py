"""Offline datasets and their division into sites."""

from fedens.data.datasets import Split, TaskData, load_task
from fedens.data.partition import dirichlet_partition

__all__ = ["Split", "TaskData", "load_task", "dirichlet_partition"]
