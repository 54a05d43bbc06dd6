"""The one module that talks to Orbax: save, keep, find and restore train-state checkpoints.

A workdir holds `checkpoints/<step>/` with two items: `state` (the train state pytree: params, optimizer
state, step, rng, ...) and `meta` (JSON: the step and the config's model section, so that a checkpoint
can be read without the config that wrote it). Saves are asynchronous. Retention keeps the newest
`keep` checkpoints and, when a metric is named, the best one by that metric.
"""

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 2, best_metric: str = "", best_mode: str = "max",
                 read_only: bool = False, async_save: bool = True):
        if best_mode not in ("max", "min"):
            raise ValueError(f"config.best_mode={best_mode!r}: use 'max' or 'min'.")
        if keep < 1:
            raise ValueError(f"config.keep_checkpoints={keep}: keep at least 1 checkpoint.")
        self.best_metric = best_metric
        self.best_mode = best_mode
        policies: list[Any] = [preservation.LatestN(keep)]
        if best_metric:
            policies.append(
                preservation.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn also makes Orbax store each step's metrics, which BestN and best_step() read.
            best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
            best_mode=best_mode,
            preservation_policy=preservation.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(
            epath.Path(directory), options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step with the best `best_metric` among checkpoints saved with metrics, else the latest."""
        scored = []
        for step in self.all_steps():
            metrics = self.manager.metrics(step)
            if metrics and self.best_metric in metrics:
                scored.append((metrics[self.best_metric], step))
        if not scored:
            return self.latest_step()
        pick = max if self.best_mode == "max" else min
        return pick(scored)[1]

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None, force: bool = False) -> bool:
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            raise ValueError(
                f"config.best_metric={self.best_metric!r} is not among the eval metrics {sorted(metrics)}; "
                "pick one of them or set it to ''."
            )
        scalars = None if metrics is None else {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=scalars,
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores onto the shardings in `abstract_state` (jax.ShapeDtypeStruct leaves): any mesh works."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], restored["meta"]

    def restore_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_raw(self, step: int) -> Any:
        """Restores the state as saved, onto one device of this host: for reading weights out of it."""
        metadata = self.manager.item_metadata(step)["state"]
        device = jax.local_devices()[0]
        sharding = jax.sharding.SingleDeviceSharding(device)
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata,
            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
        )
        return self.restore(step, abstract)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checkpoint_dir(workdir: str) -> str:
    return str(epath.Path(workdir) / "checkpoints")
