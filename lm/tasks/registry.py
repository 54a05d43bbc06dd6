"""The task registry: each task's file registers what it learns from, what it needs and what it reports.

A task is one file in `lm/tasks/` that ends with `register_task(TaskSpec(...))`, plus its import in
`lm/tasks/__init__.py`; code outside `lm/` calls `register_task` itself. `lm.experiment` looks the task up by
`config.task` and the model family by `config.model.name`, and picks the input pipeline from the pair.
"""

import dataclasses
from collections.abc import Callable

import ml_collections

from lm.models.registry import ModelFamily
from lm.registry import Registry


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What `lm` knows of a task.

    name         `config.task`
    create       (config, model family) -> the task object: `logits(model, batch, deterministic=, rngs=)`,
                 `loss(logits, batch) -> (loss, metrics)`, `eval_sums(logits, batch)`, `finalize(sums)`
    pipelines    model modality ("text" | "image") -> the input pipeline that feeds this task for it
    batch_keys   the batch keys the task reads besides the model's inputs (labels, masks, a second view)
    metrics      the evaluation metrics `finalize` reports (candidates for `config.best_metric`)
    best_metric  the metric that picks the best checkpoint by default, with `best_mode`
    check        (config, model family) -> None: the task's config checks (raise ValueError), before compiling
    predicts_classes  the task object's `logits` are scores over `config.model.num_classes` classes, so that
                 predict, select, export_savedmodel and serve (`lm.serving.trained`) take its runs
    """

    name: str
    create: Callable[[ml_collections.ConfigDict, ModelFamily], object]
    pipelines: dict[str, str]
    batch_keys: tuple[str, ...]
    metrics: tuple[str, ...]
    best_metric: str
    best_mode: str = "max"
    check: Callable[[ml_collections.ConfigDict, ModelFamily], None] | None = None
    predicts_classes: bool = False

    def pipeline(self, family: ModelFamily) -> str:
        """The input pipeline for this task on `family`'s modality; a pair without one is an error."""
        if family.modality not in self.pipelines:
            raise ValueError(
                f"config.task={self.name!r} has no input pipeline for {family.modality} models such as "
                f"config.model.name={family.name!r}; it trains {sorted(self.pipelines)} models."
            )
        return self.pipelines[family.modality]


_TASKS: Registry[TaskSpec] = Registry("task", "config.task")


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Adds a task; registering a taken name again is an error unless `replace`."""
    return _TASKS.register(spec, replace=replace)


def tasks() -> dict[str, TaskSpec]:
    """The registered tasks by name."""
    return _TASKS.entries()


def task_spec(name: str) -> TaskSpec:
    """The task `config.task` names; an unknown name is an error that lists the known ones."""
    return _TASKS.get(name)
