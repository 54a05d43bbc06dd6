"""Processes that meet at a JAX coordinator on a free local port, started again on another port if it was taken.

`free_port` can only name a port that was free a moment ago: another process (a test running beside this one, or
the OS handing out a source port) may take it before process 0's coordinator binds it, seconds later. JAX then
fails process 0 at once (gRPC prints `Failed to add port to server` and the process dies) while the other processes
wait for a coordinator that never comes, or join someone else's. Another JAX coordinator on the port is worse: gRPC
shares the port with it (SO_REUSEPORT), so the bind succeeds and the two clusters' processes meet each other.
`start` starts process 0 alone, starts the others only once process 0 listens on the port and is the only
process listening there, and picks a fresh port when the bind failed or the port is shared; any other failure is
the test's to report.
"""

import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

# What gRPC prints (in JAX 0.10) when the coordinator's server cannot bind its port, e.g.
# "add_port.cc:83] Failed to add port to server: No address added out of total 1 resolved for '[::]:52939'".
COULD_NOT_BIND = "Failed to add port to server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def could_not_bind(output: str, port: int) -> bool:
    """Whether the coordinator's output says it could not bind `port`."""
    return any(COULD_NOT_BIND in line and f":{port}'" in line for line in output.splitlines())


def popen(command: list[str], log: pathlib.Path, **kwargs) -> subprocess.Popen:
    """`command` started with its stdout and stderr written to `log`."""
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)


def _listening(process: subprocess.Popen, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                   for c in psutil.Process(process.pid).net_connections("tcp"))
    except psutil.NoSuchProcess:  # It has just exited.
        return False


def _shared(process: subprocess.Popen, port: int) -> bool:
    """Whether a process other than `process` also listens on `port` (None: one this user may not see)."""
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid != process.pid
               for c in psutil.net_connections("tcp"))


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def start(launch: Callable[[int, int], subprocess.Popen], count: int, coordinator_log: pathlib.Path,
          attempts: int = 3, timeout_s: float = 300) -> list[subprocess.Popen]:
    """Starts `count` processes, `launch(port, process_id)` each; process 0, the coordinator, writes `coordinator_log`.

    Process 0 first; the others once it listens on the port (or has exited 0). If process 0 exits because it could
    not bind the port, or another process listens there too, a fresh port, up to `attempts` times in all. Raises
    AssertionError, with process 0's output, if process 0 exits non-zero for any other reason or is not listening
    within `timeout_s`.
    """
    for attempt in range(1, attempts + 1):
        port = free_port()
        coordinator = launch(port, 0)
        deadline = time.monotonic() + timeout_s
        while coordinator.poll() is None and not _listening(coordinator, port):
            if time.monotonic() > deadline:
                coordinator.kill()
                coordinator.wait()
                raise AssertionError(f"process 0 was not listening on port {port} after {timeout_s} s:\n"
                                     + coordinator_log.read_text()[-3000:])
            time.sleep(0.1)
        if coordinator.returncode is None and _shared(coordinator, port):
            _stop([coordinator])
            print(f"Attempt {attempt} of {attempts}: another process listens on port {port} too.", file=sys.stderr)
            output = coordinator_log.read_text()
            continue
        if coordinator.returncode in (None, 0):
            processes = [coordinator]
            try:
                for i in range(1, count):
                    processes.append(launch(port, i))
            except BaseException:
                _stop(processes)
                raise
            return processes
        output = coordinator_log.read_text()
        if not could_not_bind(output, port):
            raise AssertionError(f"process 0 exited with status {coordinator.returncode}:\n{output[-3000:]}")
        print(f"Attempt {attempt} of {attempts}: port {port} was taken before the coordinator could bind it.",
              file=sys.stderr)
    raise AssertionError(f"the coordinator could not bind a free port in {attempts} attempts:\n{output[-3000:]}")


def exit_statuses(processes: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """Waits for every process (killing what is left after `timeout`: its status is then the kill's); their exit
    statuses."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass  # Killed below.
    finally:
        _stop(processes)
    return [process.returncode for process in processes]


def wait_all(processes: list[subprocess.Popen], logs: list[pathlib.Path], timeout: float = 600) -> None:
    """Waits for every process (killing what is left after `timeout`); each must exit 0."""
    for status, log in zip(exit_statuses(processes, timeout), logs):
        assert status == 0, f"exit status {status}:\n{log.read_text()[-6000:]}"
