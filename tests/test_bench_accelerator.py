"""bench/accelerator.py at tiny sizes on CPU, so that the command for a lent GPU or TPU cannot rot."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _accelerator():
    spec = importlib.util.spec_from_file_location("bench_accelerator", ROOT / "bench" / "accelerator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(result: dict, cases: list[str]) -> None:
    assert [row["case"] for row in result["rows"]] == cases
    for row in result["rows"]:
        assert row["step_ms"] > 0 and row["examples_per_second"] > 0 and row["flops_per_step"] > 0
        assert row["mfu"] > 0 and row["mfu_name"] == "mfu_vs_measured_matmul" and "measured" in row["peak_label"]


@pytest.mark.slow  # Two compiles and a timed run: ~4 CPU-minutes here.
def test_tiny_case_with_batch_search(capsys):
    """The batch search under a memory limit, compile, run and the printed table, on the tiny ViT."""
    result = _accelerator().main(["--tiny", "--cases", "vit_b16", "--memory-limit-bytes", str(64 << 20),
                                  "--start-batch", "4", "--max-batch", "8", "--rounds", "1", "--budget-s", "3000"])
    _check(result, ["vit_b16"])
    row = result["rows"][0]
    assert [trial[0] for trial in row["batch_search"]] == [4, 8] and row["batch"] == 8
    printed = capsys.readouterr().out
    assert "examples/s" in printed and "MFU" in printed and "bench/accelerator.py" in printed


@pytest.mark.slow
def test_all_tiny_cases(tmp_path):
    out = tmp_path / "result.json"
    result = _accelerator().main(["--tiny", "--rounds", "1", "--budget-s", "3000", "--json", str(out)])
    _check(result, ["bert_base_128", "bert_base_512", "resnet50", "vit_b16"])
    assert json.loads(out.read_text())["rows"][0]["case"] == "bert_base_128"


def test_budget_skips_the_cases_left():
    result = _accelerator().main(["--tiny", "--cases", "resnet50", "--budget-s", "-1"])
    assert result["rows"] == [{"case": "resnet50", "skipped": "--budget-s -1 spent"}]


# Run as a script with these packages made unimportable (a None entry in sys.modules makes `import` fail).
WITHOUT_TENSORFLOW = """
import runpy, sys
for name in ("tensorflow", "tensorflow_datasets", "tensorflow_text", "tensorboard", "clu"):
    sys.modules[name] = None
sys.argv = ["bench/accelerator.py", "--tiny", "--cases", "bert_base_128", "--rounds", "1"]
runpy.run_path("bench/accelerator.py", run_name="__main__")
"""


def test_runs_where_tensorflow_is_not_installed():
    """The train step's code path needs JAX, Flax, Optax, Orbax and ml_collections only: the command runs in a
    stock JAX accelerator image. It fails if lm.train, lm.config_checks or what they import needs TensorFlow."""
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bert_base_128" in done.stdout and "examples/s" in done.stdout
    assert "jax " in done.stdout and "flax " in done.stdout  # The versions a reported table names.
