"""bench/accelerator.py at tiny sizes on CPU, so that the command for a lent GPU or TPU cannot rot."""

import importlib.util
import json
import pathlib

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


def test_tiny_cases_with_batch_search(tmp_path, capsys):
    """The batch search under a memory limit, on the BERT masked-LM and the ViT paths; the table and JSON."""
    out = tmp_path / "result.json"
    result = _accelerator().main(["--tiny", "--cases", "bert_base_128,vit_b16", "--memory-limit-bytes", str(64 << 20),
                                  "--max-batch", "16", "--rounds", "1", "--budget-s", "3000", "--json", str(out)])
    _check(result, ["bert_base_128", "vit_b16"])
    for row in result["rows"]:
        assert [trial[0] for trial in row["batch_search"]][:2] == [8, 16] and row["batch"] == 16
    printed = capsys.readouterr().out
    assert "examples/s" in printed and "MFU" in printed and "bench/accelerator.py" in printed
    assert json.loads(out.read_text())["rows"][0]["case"] == "bert_base_128"


@pytest.mark.slow
def test_all_tiny_cases():
    result = _accelerator().main(["--tiny", "--rounds", "1", "--budget-s", "3000"])
    _check(result, ["bert_base_128", "bert_base_512", "resnet50", "vit_b16"])


def test_budget_skips_the_cases_left():
    result = _accelerator().main(["--tiny", "--cases", "resnet50", "--budget-s", "-1"])
    assert result["rows"] == [{"case": "resnet50", "skipped": "--budget-s -1 spent"}]
