"""Tasks: what is learned (loss, metrics, the batch keys it needs). Each task's file registers itself.

`task_spec(config.task)` gives the `TaskSpec`; `create_task(config)` the task object the train step uses.
"""

import ml_collections

from lm import models
from lm.tasks import classification, mlm, simclr  # noqa: F401  (each registers its task)
from lm.tasks.registry import TaskSpec, register_task, task_spec, tasks

__all__ = ["TaskSpec", "create_task", "register_task", "task_spec", "tasks"]


def create_task(config: ml_collections.ConfigDict):
    """The task object of `config.task` for the model family of `config.model`."""
    return task_spec(config.task).create(config, models.model_family(config.model))
