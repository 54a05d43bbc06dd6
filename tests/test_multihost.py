"""Many hosts in real processes on 127.0.0.1: 2 processes x 4 CPU devices against 1 process x 8 devices.

Each process is main.py, as a user starts it on each host; the coordinator listens on a free local port
(tests/cluster.py: started again on another port if that one was taken before the coordinator bound it).
The real multi-process tests take 1.5-2 minutes each on 2 shared cores: they are marked slow (make test-all).
"""

import hashlib
import itertools
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from input_pipeline.image_classification import ImageClassificationData
from input_pipeline.text_classification import TextClassificationData
from lm import checkpointing, config_checks, distributed, experiment
from tests import cluster, text_data
from tests.cluster import wait_all
from tests.test_image_pipeline import folder_config, image_folder  # noqa: F401, F811 (a fixture)
from tests.test_text_pipeline import NAMES, make_config, make_rows, write
from tests.test_train import files_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main_args(vocab, csv_path, workdir, **overrides) -> list[str]:
    """main.py flags: a tiny BERT on the synthetic CSV, no dropout, 8 steps, checkpoints at 4 and 8."""
    settings = {
        "data.train_files": csv_path, "data.text_field": "review", "data.label_field": "sentiment",
        "data.label_names": "('negative','positive')", "data.vocab_path": vocab, "model.vocab_size": -1,
        "num_train_steps": 8, "checkpoint_every": 4, "eval_every": 4, "log_every": 4, "mesh.data": 8,
        "peak_flops_per_device": 1e12, **overrides,
    }
    return [f"--config={ROOT}/configs/bert_sentiment.py:files,smoke", f"--workdir={workdir}",
            *(f"--config.{key}={value}" for key, value in settings.items())]


def start(args: list[str], devices: int, log: pathlib.Path, **env) -> subprocess.Popen:
    environment = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT), **env,
    )
    return cluster.popen([sys.executable, str(ROOT / "main.py"), *args], log, cwd=ROOT, env=environment)


def start_hosts(args: list[str], logs: pathlib.Path, timeout_s: int = 100, **env) -> list[subprocess.Popen]:
    """Two main.py processes of 4 devices each, joined by the config (process 0 is the coordinator)."""
    def launch(port: int, i: int) -> subprocess.Popen:
        return start([*args, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                      "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                      f"--config.distributed.timeout_s={timeout_s}",
                      "--config.distributed.initialization_timeout_s=120"], 4, logs / f"process{i}.log", **env)

    return cluster.start(launch, 2, logs / "process0.log")


def digest(state) -> dict[str, str]:
    """sha256 of every leaf of a state."""
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(path): hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest()
            for path, leaf in leaves}


def restored(workdir: pathlib.Path, step: int, vocab: str, csv_path: str, devices, **mesh) -> dict:
    """The state saved at `step`, restored in this single process onto `devices` with the given mesh."""
    config = files_config(pathlib.Path(vocab), csv_path, **{f"mesh.{k}": v for k, v in mesh.items()})
    exp = experiment.build(config_checks.resolved_copy(config), devices)
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
    state, _ = ckpt.restore(step, exp.spec.abstract)
    ckpt.close()
    return state


def write_data(root: pathlib.Path, vocab: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    """(root, the synthetic reviews CSV written there, the vocabulary): what main_args trains on."""
    return root, str(text_data.write_csv(root / "reviews.csv", text_data.sentiment_rows(400))), str(vocab)


@pytest.fixture(scope="module")
def data(tmp_path_factory, small_vocab):
    return write_data(tmp_path_factory.mktemp("multihost"), small_vocab)


def largest_differences(state, other) -> dict[str, float]:
    """Per leaf, the largest absolute difference relative to the leaf's largest magnitude."""
    mine = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    theirs = jax.tree.leaves(jax.device_get(other))
    return {jax.tree_util.keystr(path): float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
                                              / max(float(np.max(np.abs(a))), 1e-30))
            for (path, a), b in zip(mine, theirs, strict=True) if np.size(a)}


@pytest.mark.slow
def test_two_processes_equal_one_and_restore_elsewhere(data):
    """2 processes x 4 devices end in the same state as 1 process x 8 devices on the same mesh, to float rounding
    (XLA:CPU's matrix products split their sums by the process's device count); the checkpoint the two processes
    wrote restores bit for bit in one process onto a 2-device mesh."""
    root, csv_path, vocab = data
    overrides = {"model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0}
    # The single process joins a one-process "cluster": its collectives are then gloo's, as between processes.
    single_args = [*main_args(vocab, csv_path, root / "single", **overrides),
                   "--config.distributed.num_processes=1", "--config.distributed.process_id=0"]
    def launch_single(port: int, _) -> subprocess.Popen:
        return start([*single_args, f"--config.distributed.coordinator_address=127.0.0.1:{port}"], 8,
                     root / "single.log")

    wait_all(cluster.start(launch_single, 1, root / "single.log"), [root / "single.log"])
    hosts = start_hosts(main_args(vocab, csv_path, root / "two", **overrides), root)
    wait_all(hosts, [root / "process0.log", root / "process1.log"])

    single_state = restored(root / "single", 8, vocab, csv_path, jax.devices(), data=8)
    two_state = restored(root / "two", 8, vocab, csv_path, jax.devices(), data=8)
    assert int(two_state["step"]) == int(single_state["step"]) == 8
    differences = largest_differences(two_state, single_state)
    # Attention key biases have no gradient but rounding noise (softmax ignores a constant added to every key's
    # score), which Adam scales up to full-size steps: those leaves differ between any two summation orders.
    compared = {path: value for path, value in differences.items() if "['key']['bias']" not in path}
    largest = sorted(compared.items(), key=lambda item: -item[1])[:5]
    assert len(compared) > 100 and largest[0][1] < 1e-4, largest
    assert (root / "two" / "metrics_test.json").exists()
    assert len(list((root / "two").glob("events.out.tfevents.*"))) == 1, "only process 0 writes the metrics"
    assert "Process 1 of 2" in (root / "process1.log").read_text()

    # Onto another mesh: 2 devices, data 1 x fsdp 2.
    state = restored(root / "two", 8, vocab, csv_path, jax.devices()[:2], data=1, fsdp=2)
    kernel = state["params"]["encoder"]["layers"][0]["intermediate"]["kernel"]
    assert len(kernel.sharding.device_set) == 2 and kernel.sharding.spec[0] == "fsdp"
    assert digest(state) == digest(two_state)


@pytest.mark.parametrize(
    ("victim", "how"),
    [
        pytest.param(1, signal.SIGKILL, marks=pytest.mark.slow, id="kill_process1"),
        pytest.param(0, signal.SIGKILL, marks=pytest.mark.slow, id="kill_coordinator"),
        pytest.param(1, signal.SIGSTOP, marks=pytest.mark.slow, id="stop_process1"),  # Alive but silent.
    ],
)
def test_dead_or_stalled_peer_stops_every_process_within_the_timeout(data, victim, how):
    """kill -9 (or SIGSTOP) of one process mid-training: the other exits non-zero within timeout_s, not hanging.

    A stopped process, continued afterwards, exits non-zero too.
    """
    root, csv_path, vocab = data
    timeout_s, slack = 5, 60
    run = root / f"victim{victim}_signal{int(how)}"
    run.mkdir()
    args = main_args(vocab, csv_path, run / "workdir", num_train_steps=100_000,
                     checkpoint_every=100_000, eval_every=100_000, log_every=1)
    hosts = start_hosts(args, run, timeout_s)
    survivor, logs = hosts[1 - victim], [run / "process0.log", run / "process1.log"]
    try:
        deadline = time.monotonic() + 300
        while "train/loss" not in logs[0].read_text() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in hosts), logs[0].read_text()[-4000:] + logs[1].read_text()[-4000:]
            time.sleep(1)
        assert "train/loss" in logs[0].read_text(), "the run never started training"
        ended = "a process ended before the signal: "
        assert all(p.poll() is None for p in hosts), ended + logs[0].read_text()[-4000:] + logs[1].read_text()[-4000:]
        hosts[victim].send_signal(how)
        stopped_at = time.monotonic()
        returncode = survivor.wait(timeout=timeout_s + slack)
        elapsed = time.monotonic() - stopped_at
        if how == signal.SIGSTOP:
            hosts[victim].send_signal(signal.SIGCONT)
            assert hosts[victim].wait(timeout=timeout_s + slack) != 0
    finally:
        for process in hosts:
            if process.poll() is None:
                process.kill()
    survivor_log = before_crash_dump(logs[1 - victim].read_text())
    assert returncode != 0, survivor_log[-3000:]
    assert elapsed < timeout_s + slack
    assert re.search(PEER_FAILURE, survivor_log), survivor_log[-3000:]


# How a process learns that its peer is gone: the coordination service's missed heartbeats (a stalled or dead
# peer, after timeout_s), or, when the dead peer's sockets close while a collective waits on them, Gloo's
# connection error (before the heartbeat timeout: which comes first depends on the moment of the kill), or Gloo's
# size check of a message, which a kill mid-collective has also tripped once in a CI run (docs/RELIABILITY.md).
PEER_FAILURE = re.compile(
    r"heartbeat|distributed service detected fatal errors|Connection closed by peer|Connection reset by peer"
    r"|peer closed connection|Gloo [\w -]+ failed|gloo::\w*Exception|Received data size doesn't match expected size")


def before_crash_dump(log: str) -> str:
    """The log up to Python's crash dump (faulthandler's thread stacks and list of extension modules)."""
    return log.split("\nFatal Python error:", 1)[0].split("\nExtension modules:", 1)[0]


def test_global_batches_do_not_depend_on_the_process_count(tmp_path, minilm_vocab, image_folder):  # noqa: F811
    """Host batches concatenated in host order are the single-process batch: the basis of the 2-vs-1-process parity."""
    rows = make_rows(37)
    text_config = make_config(minilm_vocab, train_files=write(tmp_path / "t.csv", rows), label_names=NAMES)
    text_config.global_batch_size = 8
    image_config = folder_config(image_folder, augmentation="pad_crop", pad=2, flip=True)
    for make, config, key in ((TextClassificationData, text_config, "input_ids"),
                              (ImageClassificationData, image_config, "image")):
        single = make(config)
        steps = 2 * single.steps_per_epoch + 1  # Across two epoch boundaries.
        expected = [b[key] for b in itertools.islice(single.train_iterator(), steps)]
        for count in (2, 4):
            hosts = [make(config, i, count) for i in range(count)]
            assert {h.steps_per_epoch for h in hosts} == {single.steps_per_epoch}
            batches = zip(*(itertools.islice(h.train_iterator(), steps) for h in hosts))
            for want, parts in zip(expected, batches, strict=True):
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want)


ORBAX_BARRIER_CHECK = """
from absl import flags
from lm import distributed
flags.FLAGS(["main.py"])  # As app.run does in main.py, before Orbax is imported.
distributed._use_timed_orbax_barriers()
from orbax.checkpoint._src.multihost import multihost
print("timed barriers:", multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER.value)
"""


def test_orbax_barriers_are_timed_under_main():
    """Once flags are parsed (main.py), Orbax waits at timed coordination-service barriers."""
    result = subprocess.run([sys.executable, "-c", ORBAX_BARRIER_CHECK], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert "timed barriers: True" in result.stdout, result.stderr[-3000:]


SKEWED_START = """
import sys, time
import jax, jax.numpy as jnp, numpy as np
port, process_id = int(sys.argv[1]), int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
from lm import distributed
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rows = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
                                              np.full((2, 3), process_id + 1, np.float32))
total = jax.jit(lambda x: x.sum(0), out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
step = total.lower(rows).compile()
if process_id == 1:
    time.sleep(40)  # As a compilation that takes 40 s longer here than on process 0.
distributed.wait_for_all("compiled", 300)
print("sum", jax.device_get(step(rows)).tolist(), flush=True)  # The first collective of the run.
"""


@pytest.mark.slow
def test_processes_meet_before_the_first_collective(tmp_path):
    """A process that reaches its first collective 40 s after the other still joins it: `distributed.wait_for_all`
    lines them up first, as lm.train does once the train step is compiled. (Without it, XLA's gloo set-up, whose
    rendezvous gives up after 30 s, fails the run: docs/RELIABILITY.md.)"""
    environment = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                       PYTHONPATH=str(ROOT))
    logs = [tmp_path / f"process{i}.log" for i in range(2)]

    def launch(port: int, i: int) -> subprocess.Popen:
        return cluster.popen([sys.executable, "-c", SKEWED_START, str(port), str(i)], logs[i], cwd=ROOT,
                             env=environment)

    wait_all(cluster.start(launch, 2, logs[0]), logs, timeout=400)
    for log in logs:
        assert "sum [6.0, 6.0, 6.0]" in log.read_text(), log.read_text()[-3000:]


def test_settings_from_config_and_environment():
    config = files_config(pathlib.Path("vocab.txt"), "x.csv")
    dist = config.distributed
    assert distributed.resolve(dist, environ={}) is None
    environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.resolve(dist, environ) == distributed.Settings("10.0.0.1:1234", 4, 3)
    dist.process_id = 1
    assert distributed.resolve(dist, environ) == distributed.Settings("10.0.0.1:1234", 4, 1)
    with pytest.raises(ValueError, match=r"config.distributed.num_processes=-1 .* \$JAX_NUM_PROCESSES is not set"):
        distributed.resolve(dist, {"JAX_COORDINATOR_ADDRESS": "h:1"})
    dist.num_processes = 2
    dist.process_id = 2
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        distributed.resolve(dist, {"JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ValueError, match="no coordinator"):
        distributed.resolve(dist, {})
    dist.coordinator_address = "localhost"
    with pytest.raises(ValueError, match="needs a port"):
        distributed.resolve(dist, {})
    for key in ("timeout_s", "process_zero_timeout_s"):
        bad = config.copy_and_resolve_references()
        bad.distributed[key] = 0
        with pytest.raises(ValueError, match=rf"config.distributed.{key}=0 must be a positive number of seconds"):
            distributed.initialize(bad)
