"""Offline datasets and their division into sites."""

from fedens.data.datasets import Split, TaskData, load_task
from fedens.data.partition import PARTITIONS, dirichlet_partition
from fedens.data.schema import DataSchemaError, TaskSchema

__all__ = ["Split", "TaskData", "load_task", "dirichlet_partition", "PARTITIONS", "DataSchemaError",
           "TaskSchema"]
