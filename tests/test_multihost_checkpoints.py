"""Checkpoints on two processes of 4 CPU devices each (tests/multiprocess_checkpoint.py): a damaged checkpoint
that only one process can see is skipped by both, and a failure to set it aside stops both with its message."""

import os
import pathlib
import subprocess
import sys
import time

from tests import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_pair(tmp_path: pathlib.Path, *extra: str) -> tuple[list[int], list[str]]:
    """Runs tests/multiprocess_checkpoint.py as two processes: their exit statuses and logs."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    logs = [tmp_path / f"process{i}.log" for i in range(2)]

    def launch(port: int, i: int) -> subprocess.Popen:
        return cluster.popen([sys.executable, str(ROOT / "tests" / "multiprocess_checkpoint.py"), str(port), str(i),
                              str(tmp_path), *extra], logs[i], cwd=ROOT, env=env)

    statuses = cluster.exit_statuses(cluster.start(launch, 2, logs[0]), timeout=300)
    return statuses, [log.read_text() for log in logs]


def test_two_processes_agree_on_a_mismatch_only_one_can_see(tmp_path):
    """The checksums of an array sharded across the processes are all recorded; a digest that only process 1 can
    check is altered, and both processes skip that checkpoint for the previous one."""
    statuses, outputs = run_pair(tmp_path)
    for i, (status, output) in enumerate(zip(statuses, outputs)):
        assert status == 0, output[-6000:]
        assert f"process {i}: restored step 1, equal True, steps [1]" in output, output[-3000:]
        assert "checkpoints/2 cannot be restored: 1 problem(s), e.g. w[48:56,0:64]: sha256 differs" in output
    assert (tmp_path / "checkpoints_rejected" / "2").is_dir()


def test_a_checkpoint_that_cannot_be_set_aside_stops_both_processes_with_the_error(tmp_path):
    """Process 0 alone moves the skipped checkpoint; when it cannot (a file named checkpoints_rejected), process 1
    stops too, with process 0's error, instead of waiting for it in a collective."""
    started = time.monotonic()
    statuses, outputs = run_pair(tmp_path, "taken")
    assert statuses == [1, 1], outputs[1][-6000:]  # Python's exit on an error, not a kill after a hang.
    assert time.monotonic() - started < 120
    assert "FileExistsError" in outputs[0], outputs[0][-3000:]
    assert "FileExistsError" in outputs[1], outputs[1][-3000:]
    assert "while it tried to set checkpoint 2 aside" in outputs[1], outputs[1][-3000:]
    assert (tmp_path / "checkpoints" / "2").is_dir()  # Nothing lost.
