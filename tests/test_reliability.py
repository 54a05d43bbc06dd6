"""Runs that survive: exact resume after kill -9, SIGTERM, corrupt checkpoints, failed saves, non-finite steps,
determinism. docs/RELIABILITY.md cites these tests line by line.

The kill tests run main.py in real processes on a tiny BERT (8 fake CPU devices) with config.debug.step_log,
which writes `step loss sha256-of-batch` per step: two runs that saw the same batches and computed the same
losses have the same lines.
"""

import asyncio
import hashlib
import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lm
from lm import checkpointing, step_log
from tests import text_data
from tests.test_train import files_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 12  # 80 training examples, batch 16: 5 steps an epoch, so the runs cross two epoch boundaries.


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, pathlib.Path]:
    folder = tmp_path_factory.mktemp("data")
    return {"csv": text_data.write_csv(folder / "reviews.csv", text_data.sentiment_rows(100)),
            "vocab": text_data.write_vocab(folder / "vocab.txt")}


def run_config(data, **overrides):
    settings = {"num_train_steps": STEPS, "checkpoint_every": 2, "eval_every": 1000, "log_every": 4,
                "keep_checkpoints": 3, "debug.step_log": True, "peak_flops_per_device": 1.0,
                "eval_splits_at_end": (), **overrides}
    return files_config(data["vocab"], data["csv"], **settings)


def main_args(data, workdir, **overrides) -> list[str]:
    config = run_config(data, **overrides)
    flags = {"num_train_steps", "checkpoint_every", "eval_every", "log_every", "keep_checkpoints", "debug.step_log",
             "peak_flops_per_device", "eval_splits_at_end", *overrides}
    args = [sys.executable, str(ROOT / "main.py"), "--config=configs/bert_sentiment.py:files,smoke",
            f"--workdir={workdir}", f"--config.data.train_files={data['csv']}", "--config.data.text_field=review",
            "--config.data.label_field=sentiment", '--config.data.label_names=("negative","positive")',
            f"--config.data.vocab_path={data['vocab']}", "--config.model.vocab_size=-1"]
    return args + [f"--config.{key}={config[key]}" for key in sorted(flags)]


def start(data, workdir, **overrides) -> subprocess.Popen:
    # XLA_FLAGS as this process has them (conftest added 8 devices to any the caller set): runs compared bitwise
    # with the ones in this process must compile alike.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    log_file = open(pathlib.Path(workdir).with_suffix(".log"), "a")  # noqa: SIM115 - the child holds it.
    return subprocess.Popen(main_args(data, workdir, **overrides), cwd=ROOT, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, workdir) -> int:
    code = process.wait(timeout=600)
    assert code in (0, -signal.SIGKILL), pathlib.Path(workdir).with_suffix(".log").read_text()[-4000:]
    return code


def committed_steps(workdir) -> list[int]:
    folder = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def logged_steps(workdir) -> list[list[str]]:
    path = pathlib.Path(step_log.path(str(workdir)))
    return step_log.read(str(workdir)) if path.exists() else []


def wait_for(condition, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def state_digests(workdir, step=None) -> dict[str, str]:
    """sha256 of every leaf of a checkpoint's state (the newest by default)."""
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), read_only=True)
    state, _ = ckpt.restore_raw(step if step is not None else ckpt.latest_step())
    ckpt.close()
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(path): hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest()
            for path, leaf in flat}


def check_replay(workdir, straight_lines, steps=STEPS) -> list[int]:
    """Each (re)start began at a committed step, every step's batch and loss equal the straight run's, and the
    steps after each start continue without a gap. Returns the start steps."""
    expected = {int(line[0]): line for line in straight_lines if line[0] != "start"}
    assert sorted(expected) == list(range(1, steps + 1))
    starts, next_step = [], None
    for line in logged_steps(workdir):
        if line[0] == "start":
            starts.append(int(line[1]))
            next_step = int(line[1]) + 1
            continue
        assert int(line[0]) == next_step, f"step {line[0]} after {next_step - 1}: a batch skipped or repeated"
        assert line == expected[int(line[0])], f"step {line[0]} differs from the uninterrupted run"
        next_step += 1
    assert next_step == steps + 1
    return starts


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> pathlib.Path:
    """The uninterrupted run, in its own process."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    assert finish(start(data, workdir), workdir) == 0
    return workdir


def test_kill_9_and_resume_is_exact(data, straight, tmp_path):
    """kill -9 once the step-6 checkpoint is committed; the restart resumes at the newest committed step and ends
    bitwise where the uninterrupted run ends: same state leaves, same per-step batches and losses."""
    workdir = tmp_path / "run"
    process = start(data, workdir)
    wait_for(lambda: STEPS // 2 in committed_steps(workdir) or process.poll() is not None)
    process.kill()
    assert finish(process, workdir) == -signal.SIGKILL
    newest = committed_steps(workdir)[-1]
    assert newest < STEPS
    lm.run(run_config(data), str(workdir), "train")  # The restart, in this process to save a start-up.
    assert check_replay(workdir, logged_steps(straight)) == [0, newest]
    assert state_digests(workdir) == state_digests(straight)


@pytest.mark.slow
def test_random_kills(data, tmp_path):
    """kill -9 at random moments, ten times, with a save every step: each restart resumes at the newest committed
    step, no batch is skipped or repeated, and the final state equals the uninterrupted run's bitwise."""
    steps = 40
    straight = tmp_path / "straight"
    assert finish(start(data, straight, num_train_steps=steps), straight) == 0
    workdir, rng, kills = tmp_path / "run", random.Random(0), 0
    expected_starts = [0]
    while True:
        process = start(data, workdir, num_train_steps=steps, checkpoint_every=1)
        if kills < 10:  # Once this process has trained a step, at a random moment.
            starts = len(expected_starts)
            wait_for(lambda p=process, n=starts: p.poll() is not None or _training(workdir, n))
            # A random moment, but before the run passes `last`: three steps are left for each later kill, so
            # a fast machine cannot finish the run before the tenth kill. A first save takes seconds here,
            # later ones < 1 s.
            deadline, last = time.monotonic() + rng.uniform(0.0, 10.0), steps - 3 * (10 - kills)
            wait_for(lambda p=process, t=deadline, n=last: p.poll() is not None or time.monotonic() > t
                     or _last_step(workdir) >= n)
            process.kill()
        if finish(process, workdir) == 0:
            break
        kills += 1
        committed = committed_steps(workdir)
        expected_starts.append(committed[-1] if committed else 0)
    assert kills == 10 and max(expected_starts) > 0, f"{kills} kills before the run ended; starts {expected_starts}"
    assert check_replay(workdir, logged_steps(straight), steps) == expected_starts
    assert state_digests(workdir) == state_digests(straight)


def _last_step(workdir) -> int:
    """The newest step the run has logged (0 before any)."""
    steps = [int(line[0]) for line in logged_steps(workdir) if line[0].isdigit()]  # Not "start", nor a torn line.
    return steps[-1] if steps else 0


def _training(workdir, starts: int) -> bool:
    """Whether the `starts`-th start of the run has logged a step."""
    lines = logged_steps(workdir)
    return sum(line[0] == "start" for line in lines) == starts and lines[-1][0] != "start"


def test_sigterm_saves_the_step_and_exits_0(data, straight, tmp_path):
    """SIGTERM: the run saves the step it is at and exits with status 0; the restart continues from that step."""
    workdir = tmp_path / "run"
    process = start(data, workdir, checkpoint_every=100)
    # As soon as the run starts (its preemption watch is installed before the start line): waiting for a few steps
    # left under a second of the 12 steps to signal in, which a loaded or a faster machine could miss.
    wait_for(lambda: len(logged_steps(workdir)) >= 1 or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    assert finish(process, workdir) == 0
    stopped_at = int(logged_steps(workdir)[-1][0])
    assert stopped_at < STEPS and committed_steps(workdir) == [stopped_at]
    assert "Preempted: saved step" in workdir.with_suffix(".log").read_text()
    lm.run(run_config(data, checkpoint_every=100), str(workdir), "train")  # The restart, in this process.
    assert check_replay(workdir, logged_steps(straight)) == [0, stopped_at]
    assert state_digests(workdir) == state_digests(straight)


def test_two_fresh_runs_with_one_seed_are_bitwise_equal(data, straight, tmp_path):
    """A second fresh run (in this process, the first ran in its own) gives bitwise the same parameters."""
    lm.run(run_config(data), str(tmp_path / "again"), "train")
    assert state_digests(tmp_path / "again") == state_digests(straight)
    assert logged_steps(tmp_path / "again") == logged_steps(straight)


# ----------------------------------------------------------------------------------------------------
# Checkpoint integrity.


def _corrupt(kind: str, step_dir: pathlib.Path) -> None:
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    biggest = max(data_files, key=lambda p: p.stat().st_size)
    if kind == "truncated":
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    elif kind == "deleted":
        biggest.unlink()
    elif kind == "bit_flip":  # Same size; Orbax alone restores it without complaint.
        content = bytearray(biggest.read_bytes())
        content[len(content) // 2] ^= 0x10
        biggest.write_bytes(bytes(content))
    elif kind == "empty":
        shutil.rmtree(step_dir)
        step_dir.mkdir()
    elif kind == "foreign":  # Another program's checkpoint: no checksums item.
        shutil.rmtree(step_dir / "checksums")


def _rows_over_8_devices() -> jax.sharding.NamedSharding:
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _small_state(value: float) -> dict:
    weights = np.random.default_rng(int(value)).normal(size=(64, 64)).astype(np.float32)
    return {"w": jax.device_put(weights, _rows_over_8_devices()), "step": jnp.int32(value)}


@pytest.mark.parametrize("kind", ["truncated", "deleted", "bit_flip", "empty", "foreign"])
def test_corrupt_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, kind):
    directory = tmp_path / "checkpoints"
    ckpt = checkpointing.Checkpointer(str(directory), keep=3)
    for step in (1, 2):
        ckpt.save(step, _small_state(step), {"step": step}, force=True)
    ckpt.wait()
    ckpt.close()
    _corrupt(kind, directory / "2")

    ckpt = checkpointing.Checkpointer(str(directory), keep=3)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), _small_state(0))
    with caplog.at_level(logging.WARNING, logger="lm.checkpointing"):
        state, _, step = ckpt.restore_latest(abstract)
    assert step == 1
    np.testing.assert_array_equal(state["w"], _small_state(1)["w"])
    assert any(str(directory / "2") in record.getMessage() for record in caplog.records), caplog.text
    assert ckpt.all_steps() == [1] and (tmp_path / "checkpoints_rejected" / "2").exists()
    ckpt.save(2, _small_state(2), {"step": 2}, force=True)  # The step is free again: no crash loop.
    ckpt.wait()
    ckpt.close()


# Restores a truncated checkpoint of 4 arrays of 16 MB sharded over 8 devices, in a fresh process (the noise comes
# from TensorStore's threads and at interpreter exit).
RESTORE_TRUNCATED = """
import sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from lm import checkpointing
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
abstract = {{f"w{{i}}": jax.ShapeDtypeStruct((2048, 2048), np.float32, sharding=sharded) for i in range(4)}}
with checkpointing.Checkpointer({directory!r}, read_only=True) as checkpointer:
    checkpointer.restore(1, abstract)
"""


def test_a_failed_restore_ends_with_our_error_alone(tmp_path):
    """A restore that fails on one shard while other shards' reads are pending: Orbax 0.12.8 closed its event loop
    under them, and "Event loop is closed" tracebacks and never-retrieved task errors followed our CheckpointError
    (every run of this program before the fix); now the pending reads are cancelled and awaited first."""
    sharded = _rows_over_8_devices()
    rng = np.random.default_rng(0)
    state = {f"w{i}": jax.device_put(rng.normal(size=(2048, 2048)).astype(np.float32), sharded) for i in range(4)}
    with checkpointing.Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
        checkpointer.save(1, state, {"step": 1}, force=True)
        checkpointer.wait()
    _corrupt("truncated", tmp_path / "checkpoints" / "1")
    program = RESTORE_TRUNCATED.format(root=str(ROOT), directory=str(tmp_path / "checkpoints"))
    run = subprocess.run([sys.executable, "-c", program], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and lines[-1].startswith("lm.checkpointing.CheckpointError: "), run.stderr[-3000:]
    for noise in ("Event loop is closed", "Task exception was never retrieved", "Exception ignored in"):
        assert noise not in run.stderr, run.stderr[-3000:]


def test_a_failed_restore_cancels_the_reads_it_leaves_pending():
    """The race-free half of the test above: inside a restore, Orbax runs its coroutines through our loop helper
    (an Orbax that renamed it fails here, not by chance), and a coroutine that fails with a read still pending
    leaves that read cancelled, not abandoned to a closed loop."""
    from orbax.checkpoint._src import asyncio_utils

    pending = {}

    async def fails_with_a_read_pending():
        pending["read"] = asyncio.ensure_future(asyncio.Event().wait())  # Never set: a read that has not ended.
        await asyncio.sleep(0)
        raise ValueError("one shard failed")

    with checkpointing._leftover_reads_cancelled():
        assert asyncio_utils._run_sync_via_new_loop is checkpointing._run_on_a_drained_loop
        with pytest.raises(ValueError, match="one shard failed"):
            asyncio_utils.run_sync(fails_with_a_read_pending())
        with checkpointing._leftover_reads_cancelled():  # Nested: the outer swap stays in charge.
            pass
        assert asyncio_utils._run_sync_via_new_loop is checkpointing._run_on_a_drained_loop
    assert pending["read"].cancelled()
    assert asyncio_utils._run_sync_via_new_loop is not checkpointing._run_on_a_drained_loop


def test_run_continues_from_the_previous_good_checkpoint(data, straight, tmp_path, caplog):
    """The newest checkpoint of a finished run is bit-flipped: the run restarts from the one before, redoes the
    last steps, and ends bitwise where the uninterrupted run ended."""
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    (workdir / step_log.path("")).unlink()
    assert committed_steps(workdir) == [8, 10, 12]
    _corrupt("bit_flip", workdir / "checkpoints" / "12")
    with caplog.at_level(logging.WARNING, logger="lm.checkpointing"):
        lm.run(run_config(data), str(workdir), "train")
    assert f"{workdir / 'checkpoints' / '12'} cannot be restored" in caplog.text
    assert logged_steps(workdir)[0] == ["start", "10"]
    assert state_digests(workdir) == state_digests(straight)


def test_eval_and_init_from_refuse_a_damaged_checkpoint(data, straight, tmp_path):
    """--mode=eval and fine-tuning from a workdir (config.init_from) restore through the same checked path: a
    same-size bit flip, which Orbax alone restores without complaint, stops both with a CheckpointError."""
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    _corrupt("bit_flip", workdir / "checkpoints" / "12")
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/12 cannot be restored.*Other saved steps: "
                                                              r"\[8, 10\] \(--config.eval_checkpoint=STEP picks one"):
        lm.run(run_config(data, eval_checkpoint="12"), str(workdir), "eval")
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/12 cannot be restored"):
        lm.run(run_config(data, init_from=str(workdir)), str(tmp_path / "fine_tuned"), "train")
    assert not list((tmp_path / "fine_tuned").glob("checkpoints/*"))  # Nothing trained from it.


def test_failed_async_save_raises_by_the_next_save(tmp_path, monkeypatch):
    """The commit of step 2 fails in Orbax's background thread: the next save raises in the main thread, and
    step 1, the last good checkpoint, is neither dropped from the list nor deleted by retention (keep=1)."""
    from orbax.checkpoint._src.path import async_path

    real_rename = async_path.rename

    async def failing_rename(src, dst):
        if pathlib.Path(dst).name == "2":
            raise PermissionError(13, "Permission denied", str(dst))
        return await real_rename(src, dst)

    monkeypatch.setattr(async_path, "rename", failing_rename)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=1)
    ckpt.save(1, _small_state(1), {"step": 1}, force=True)
    ckpt.save(2, _small_state(2), {"step": 2}, force=True)
    with pytest.raises(checkpointing.CheckpointError, match="checkpoints/2 failed: .*Permission denied"):
        ckpt.save(3, _small_state(3), {"step": 3}, force=True)
    assert ckpt.all_steps() == [1] and (tmp_path / "checkpoints" / "1").exists()
    ckpt.close()


def test_retention_keeps_the_newest(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=2)
    for step in (1, 2, 3, 4):
        ckpt.save(step, _small_state(step), {"step": step}, force=True)
        assert len(ckpt.all_steps()) <= 3  # The newest two plus the one being written.
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
    ckpt.close()


def test_a_non_finite_state_is_never_saved(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    state = _small_state(1)
    state["w"] = state["w"].at[3, 3].set(jnp.nan)
    with pytest.raises(FloatingPointError, match="w holds non-finite values at step 1"):
        ckpt.save(1, state, {"step": 1}, force=True)
    assert ckpt.all_steps() == []
    ckpt.close()
