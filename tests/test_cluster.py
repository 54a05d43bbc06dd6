"""tests/cluster.py: a coordinator port taken before JAX binds it is replaced by a fresh one; other failures are not."""

import os
import socket
import subprocess
import sys

import pytest

from tests import cluster

JOIN = """
import sys
import jax
port, process_id = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id, initialization_timeout=60)
print("joined", process_id, flush=True)
"""


def launcher(tmp_path, program: str, launched: list):
    environment = dict(os.environ, JAX_PLATFORMS="cpu")

    def launch(port: int, i: int) -> subprocess.Popen:
        launched.append((port, i))
        return cluster.popen([sys.executable, "-c", program, str(port), str(i)], tmp_path / f"process{i}.log",
                             env=environment)

    return launch


@pytest.fixture
def taken():
    """A port that another process's server holds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def shared():
    """A port that this process listens on as another JAX coordinator would: with SO_REUSEPORT, which gRPC sets
    too, so a coordinator's bind there succeeds."""
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("::", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("holder", ["taken", "shared"])
def test_a_port_in_use_is_replaced_before_the_other_processes_start(tmp_path, holder, request, monkeypatch):
    """A port another server holds (the coordinator fails to bind it) or shares (it binds, beside another)."""
    used, free = request.getfixturevalue(holder), cluster.free_port()
    ports = iter([used, free])
    monkeypatch.setattr(cluster, "free_port", lambda: next(ports))
    launched = []
    logs = [tmp_path / "process0.log", tmp_path / "process1.log"]
    cluster.wait_all(cluster.start(launcher(tmp_path, JOIN, launched), 2, logs[0]), logs, timeout=120)
    assert launched == [(used, 0), (free, 0), (free, 1)]
    assert [log.read_text().strip().splitlines()[-1] for log in logs] == ["joined 0", "joined 1"]


def test_a_port_taken_every_time_is_given_up(tmp_path, taken, monkeypatch):
    monkeypatch.setattr(cluster, "free_port", lambda: taken)
    launched = []
    with pytest.raises(AssertionError, match=f"(?s)could not bind a free port in 2 attempts.*:{taken}'"):
        cluster.start(launcher(tmp_path, JOIN, launched), 2, tmp_path / "process0.log", attempts=2)
    assert launched == [(taken, 0), (taken, 0)]


def test_any_other_failure_is_not_retried(tmp_path):
    launched = []
    program = "raise SystemExit('a failure of the code under test')"
    with pytest.raises(AssertionError, match="process 0 exited with status 1:\na failure of the code under test"):
        cluster.start(launcher(tmp_path, program, launched), 2, tmp_path / "process0.log")
    assert len(launched) == 1
