"""lm.host_memory: after `keep_freed_memory`, a compiled program's second run reuses the first run's pages."""

import os
import subprocess
import sys
import textwrap

import pytest

from lm import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose temporary buffer (sorted 16 MB intermediates) XLA:CPU allocates at every run. Prints the minor
# page faults (the pages the kernel had to map afresh) of each of 5 runs after 2 warm-up runs. With reuse a
# run may still fault now and then (a small block freed into the middle of the heap can split the free
# space), so the test reads the median.
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
    f(x).block_until_ready()
    f(x).block_until_ready()
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(malloc: str) -> tuple[str, int]:
    """Whether keep_freed_memory applied, and the median page faults of a run, in a fresh process."""
    env = {**os.environ, host_memory.MALLOC_ENV: malloc, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    run = subprocess.run([sys.executable, "-c", PROGRAM.format(root=ROOT)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    applied = [line.split()[1] for line in out.splitlines() if line.startswith("applied")]
    faults = sorted(int(line.split()[1]) for line in out.splitlines() if line.startswith("faults"))
    return applied[0], faults[len(faults) // 2]


@pytest.mark.skipif(host_memory.glibc() is None, reason="needs glibc's malloc")
def test_second_run_reuses_the_pages_of_the_first():
    applied, kept = _faults("reuse")
    system_applied, system = _faults("system")
    assert (applied, system_applied) == ("True", "False")
    pages = 2048 * 2048 * 4 // 4096  # One 16 MB intermediate: the temporary buffer holds several.
    assert system > pages, f"glibc's defaults should map the temporary buffer afresh each run ({system} faults)"
    assert kept < pages // 4, f"the run should reuse the freed pages, yet it faulted {kept} ({system} without)"


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
