"""lm.host_memory: after `keep_freed_memory`, a compiled program's second run reuses the first run's pages."""

import os
import subprocess
import sys
import textwrap

import pytest

from lm import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose temporary buffer (sorted 16 MB intermediates) XLA:CPU allocates at every run. Prints the minor
# page faults (the pages the kernel had to map afresh) of each of `runs` runs after 4 warm-up runs. With reuse a
# run still faults now and then, in bursts of up to 4 runs, most often soon after warm-up (a small block allocated
# into the freed space splits it). Measured on a 2-core machine, 12 processes of 15 runs or more, 4 of them beside
# a test run: at most 5 of a process's first 15 runs faulted, 0 to 5; with glibc's defaults all 60 runs of 2
# processes did. So the test counts the runs that faulted and allows half of them: a median of 5 failed when a
# burst fell inside them, and a reuse that did nothing still faults every run.
PROGRAM = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {root!r})
    from lm import host_memory
    print("applied", host_memory.keep_freed_memory())
    import jax, jax.numpy as jnp

    @jax.jit
    def f(x):
        for _ in range(4):
            x = jnp.sort(x.T, axis=1) * 0.5 + 1.0
        return x.sum()

    x = jnp.ones((2048, 2048), jnp.float32) * 1e-3
    for _ in range(4):
        f(x).block_until_ready()
    for _ in range({runs}):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


RUNS = 15


def _faults(malloc: str, runs: int) -> tuple[str, list[int]]:
    """Whether keep_freed_memory applied, and the page faults of each of `runs` runs, in a fresh process."""
    env = {**os.environ, host_memory.MALLOC_ENV: malloc, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    program = PROGRAM.format(root=ROOT, runs=runs)
    run = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    applied = [line.split()[1] for line in out.splitlines() if line.startswith("applied")]
    faults = [int(line.split()[1]) for line in out.splitlines() if line.startswith("faults")]
    assert len(faults) == runs, out
    return applied[0], faults


@pytest.mark.slow  # ~40 s: 22 runs of a program in subprocesses.
@pytest.mark.skipif(host_memory.glibc() is None, reason="needs glibc's malloc")
def test_second_run_reuses_the_pages_of_the_first():
    applied, kept = _faults("reuse", RUNS)
    system_applied, system = _faults("system", 3)  # glibc's defaults fault every run: a few runs show it.
    assert (applied, system_applied) == ("True", "False")
    pages = 2048 * 2048 * 4 // 4096  # One 16 MB intermediate: the temporary buffer holds several.
    assert all(faults > pages for faults in system), f"glibc's defaults should map the buffer afresh each run: {system}"
    faulted = sum(faults > pages // 4 for faults in kept)
    assert faulted <= RUNS // 2, f"the runs should reuse the freed pages, yet {faulted} of {RUNS} faulted: {kept}"


def test_too_late_it_changes_nothing(monkeypatch):
    monkeypatch.delenv(host_memory.MALLOC_ENV, raising=False)
    assert "jax" in sys.modules  # conftest imported it: this process's threads have their arenas.
    assert host_memory.keep_freed_memory() is False


def test_main_keeps_glibc_defaults_only_for_serving():
    import main

    assert main.serving(["main.py", "--config=c.py", "--mode=serve"])
    assert main.serving(["main.py", "--mode", "serve", "--workdir=/tmp/w"])
    assert not main.serving(["main.py", "--mode=predict", "--config.serving.port=1"])
    assert not main.serving(["main.py", "--workdir", "serve"])
    assert main.serving(["main.py", "-mode=serve"])
    assert not main.serving(["main.py", "--mode=serve", "--mode=train"])  # absl: the last one wins.


def test_an_unknown_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(host_memory.MALLOC_ENV, "jemalloc")
    with pytest.raises(ValueError, match="LM_MALLOC='jemalloc' is not known; use one of reuse, system"):
        host_memory.keep_freed_memory()
