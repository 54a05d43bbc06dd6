"""The one module that talks to Orbax: save, keep, find, verify and restore train-state checkpoints.

A workdir holds `checkpoints/<step>/` with three items: `state` (the train state pytree: params, optimizer
state, step, rng, ...), `meta` (JSON: the step, the data position and the config's model section, so that
a checkpoint can be read without the config that wrote it) and `checksums` (JSON: a sha256 per shard of
every state array, `lm.integrity`). Orbax writes the items into a temporary directory and renames it to
`<step>` once all are written: a step directory is either whole or absent, and its checksums are inside.

Restores verify the checksums: a truncated, missing or altered file, an empty or foreign step directory
never restores silently. `restore_latest` sets such a directory aside (into `checkpoints_rejected/`, with a
warning that names it) and falls back to the next newest good one.

Saves are asynchronous. The next save (or `wait`) confirms that the previous one reached the disk and
raises in the main thread if it did not. Retention is ours, not Orbax's: the newest `keep` checkpoints and,
when a metric is named, the best one by that metric stay; older ones are deleted only after a newer save
is confirmed, so the last good checkpoint is never deleted before its successor is committed.
"""

import asyncio
import contextlib
import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src import asyncio_utils as orbax_asyncio  # Private: see _leftover_reads_cancelled.

from lm import distributed, integrity, paths

log = logging.getLogger(__name__)

ITEMS = ("state", "meta", "checksums")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted, or a save that did not reach the disk."""


class StateMismatch(CheckpointError):
    """A sound checkpoint of another model or optimizer: its arrays differ in names or shapes from the state
    restoring it.

    Not damage: `restore_latest` raises it instead of setting the checkpoint aside."""


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 2, best_metric: str = "", best_mode: str = "max",
                 read_only: bool = False, async_save: bool = True, process_zero_timeout_s: int = 3600):
        if best_mode not in ("max", "min"):
            raise ValueError(f"config.best_mode={best_mode!r}: use 'max' or 'min'.")
        if keep < 1:
            raise ValueError(f"config.keep_checkpoints={keep}: keep at least 1 checkpoint.")
        self.directory = epath.Path(directory)
        self.keep = keep
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.read_only = read_only
        self.process_zero_timeout_s = process_zero_timeout_s  # config.distributed's: see _set_aside.
        self._pending: int | None = None  # The step of a save not yet confirmed on disk.
        options = ocp.CheckpointManagerOptions(
            # best_fn makes Orbax store each step's metrics, which best_step() reads. No max_to_keep and no
            # preservation policy: Orbax keeps everything and `_prune` decides (see the module docstring).
            best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_path(self, step: int) -> epath.Path:
        return self.directory / str(step)

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
        """Starts an asynchronous save; first confirms the previous one (raising CheckpointError if it failed).

        The checksums are computed here, on host copies of this process's shards; a state holding NaN or
        infinity raises `integrity.NonFiniteError` and is not saved.
        """
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            raise ValueError(
                f"config.best_metric={self.best_metric!r} is not among the eval metrics {sorted(metrics)}; "
                "pick one of them or set it to ''."
            )
        self._confirm_pending()
        checksums = integrity.checksums(state, where=f" at step {step}")
        scalars = None if metrics is None else {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                                    checksums=ocp.args.JsonSave(checksums)),
            metrics=scalars,
            force=force,
        )
        if saved:
            self._pending = step
        return saved

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores onto the shardings in `abstract_state` (jax.ShapeDtypeStruct leaves): any mesh works.

        Raises CheckpointError, on every process alike, if any process fails to read the checkpoint or finds
        arrays that differ from the checksums recorded at save.
        """
        differences = integrity.agree(self.state_differences(step, abstract_state))  # Every process alike.
        if differences:
            raise StateMismatch(
                f"{self.step_path(step)} holds another model or optimizer state than this config builds (are the "
                f"model and optimizer sections the ones the run trained with?): {len(differences)} array(s) differ, "
                f"e.g. {'; '.join(differences[:4])}"
            )
        return self._restore_verified(step, abstract_state)

    def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """`restore` once the state's arrays are known to match: reads, then checks the checksums."""
        problems, restored, error = [], {}, None
        try:
            with _leftover_reads_cancelled():
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                            meta=ocp.args.JsonRestore(), checksums=ocp.args.JsonRestore()),
                )
            if not restored.get("checksums"):
                problems = ["it holds no checksums (not written by this version of lm)"]
            else:
                problems = integrity.local_mismatches(restored["state"], restored["checksums"])
        except Exception as caught:  # Reported below, on every process, as a CheckpointError.
            error = caught
            first_line = (str(caught).strip().splitlines() or [""])[0]  # TensorStore appends its whole spec.
            problems = [f"{type(caught).__name__}: {first_line[:300]}"]
        problems = integrity.agree(problems)
        if problems:
            others = [other for other in self.all_steps() if other != step]
            raise CheckpointError(
                f"{self.step_path(step)} cannot be restored: {len(problems)} problem(s), e.g. "
                f"{'; '.join(problems[:3])}. Other saved steps: {others} (--config.eval_checkpoint=STEP picks one "
                "for eval, predict, export and serve; training falls back to the newest good one by itself)."
            ) from error
        return restored["state"], restored["meta"]

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """The newest checkpoint that restores and verifies: (state, meta, step), or None if there is none.

        Each newer directory that fails is reported with a warning that names it and, unless read-only,
        moved into `checkpoints_rejected/` so that the run does not trip over it again.
        """
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(step, abstract_state)
            except StateMismatch:  # Sound, but of another model: the caller says what changed; nothing is moved.
                raise
            except CheckpointError as error:  # This checkpoint cannot be used: fall back to the one before.
                log.warning("Checkpoint %s is skipped: %s", self.step_path(step), error)
                self._set_aside(step)
                continue
            return state, meta, step
        return None

    def _set_aside(self, step: int) -> None:
        """Process 0 moves checkpoint `step` to <directory>_rejected/; the others wait for it, and a failure of the
        move (say, that folder's name taken by a file) stops every process with its message."""
        if self.read_only:
            return

        def move() -> None:
            rejected = self.directory.parent / f"{self.directory.name}_rejected"
            rejected.mkdir(parents=True, exist_ok=True)
            target, n = rejected / str(step), 1
            while target.exists():
                target, n = rejected / f"{step}.{n}", n + 1
            self.step_path(step).rename(target)
            log.warning("Moved %s to %s.", self.step_path(step), target)

        distributed.on_process_zero(move, f"set checkpoint {step} aside", self.process_zero_timeout_s)
        self.manager.reload()

    def state_differences(self, step: int, abstract_state: Any) -> list[str]:
        """The arrays of the state (parameters, BatchNorm statistics, optimizer state...) whose names or shapes
        differ between checkpoint `step` and `abstract_state`: [] when they agree, or when the checkpoint's
        metadata cannot be read (then the restore itself reports the damage)."""
        try:
            saved = self._saved_arrays(step)
        except Exception:  # A damaged or foreign directory: left to the restore's checks.
            return []

        def shapes(state) -> dict[str, tuple]:
            return {name: tuple(getattr(leaf, "shape", ())) for name, leaf in paths.flatten(state).items()}

        theirs, ours = shapes(saved), shapes(abstract_state)
        differences = [f"{name} is {theirs[name]} in the checkpoint, {ours[name]} here"
                       for name in ours if name in theirs and theirs[name] != ours[name]]
        differences += [f"{name} only here" for name in ours if name not in theirs]
        differences += [f"{name} only in the checkpoint" for name in theirs if name not in ours]
        return differences

    def restore_raw(self, step: int) -> Any:
        """Restores the state as saved, onto one device of this host: for reading weights out of it.

        The shapes come from the state item's own metadata (the manager knows no handler for it before a save or
        restore, and would give None: Orbax would then restore onto the saved devices, which a run on another
        topology, e.g. several processes, does not have).
        """
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), self._saved_arrays(step),
            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
        )
        return self._restore_verified(step, abstract)  # Its arrays are the checkpoint's own: nothing to compare.

    def _saved_arrays(self, step: int) -> Any:
        """The state item's metadata tree (a shape and dtype per array), read without the arrays."""
        return ocp.StandardCheckpointHandler().metadata(self.step_path(step) / "state").tree

    def wait(self) -> None:
        """Blocks until the last save is on disk (CheckpointError if it failed), then applies retention."""
        self._confirm_pending()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        """Closes the manager on every path out, an error's included (it does not `wait` for a save: call that)."""
        self.close()

    def _confirm_pending(self) -> None:
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as error:
            raise CheckpointError(f"Saving checkpoint {self.step_path(step)} failed: {error}") from error
        finally:
            self.manager.reload()  # The disk decides what is listed, not the failed save's bookkeeping.
        if step not in self.all_steps():
            raise CheckpointError(
                f"Saving checkpoint {self.step_path(step)} failed: it is not on disk after the save finished "
                f"(earlier checkpoints: {self.all_steps()})."
            )
        self._prune()

    def _prune(self) -> None:
        steps = self.all_steps()
        keep = set(steps[-self.keep:])
        if self.best_metric:
            keep.add(self.best_step())
        for step in steps:
            if step not in keep:
                self.manager.delete(step)


def _run_on_a_drained_loop(coro):
    """Orbax's `_run_sync_via_new_loop`, except that the tasks a failure leaves behind are cancelled (which cancels
    their TensorStore reads) and awaited before the loop closes, as `asyncio.run` does."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            for _ in range(10):  # Cancelling may start more tasks (their clean-up): a few rounds end them all.
                leftover = asyncio.all_tasks(loop)
                if not leftover:
                    break
                for task in leftover:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


@contextlib.contextmanager
def _leftover_reads_cancelled():
    """Orbax 0.12.8 runs a restore in an event loop of its own and closes it as soon as one read fails, with the
    reads of the other shards still pending: TensorStore then reports each to the closed loop ("RuntimeError: Event
    loop is closed"), and asyncio logs their never-retrieved errors with TensorStore's whole spec, after our
    CheckpointError. Until Orbax drains its loop itself, its helper is swapped for one that does while our restore
    runs (another thread's Orbax calls in that window get it too: it only cancels what a closed loop would drop).
    With an Orbax that lacks the helper nothing is swapped; a restore that overlaps one that swapped leaves the
    swap to it, so the original always comes back."""
    original = getattr(orbax_asyncio, "_run_sync_via_new_loop", None)
    if original is None or original is _run_on_a_drained_loop:
        yield
        return
    orbax_asyncio._run_sync_via_new_loop = _run_on_a_drained_loop
    try:
        yield
    finally:
        orbax_asyncio._run_sync_via_new_loop = original


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checkpoint_dir(workdir: str) -> str:
    return str(epath.Path(workdir) / "checkpoints")
