"""lm.report builds the results table from workdirs: the paper's number next to the run's, with the command."""

import json

from configs import baselines
from configs.baselines import resnet18_cifar10
from lm import report


def _workdir(root, name, config, metrics=None):
    workdir = root / name
    workdir.mkdir()
    text = json.dumps(config) if isinstance(config, dict) else config.to_json_best_effort()
    (workdir / "config.json").write_text(text)
    for split, values in (metrics or {}).items():
        (workdir / f"metrics_{split}.json").write_text(json.dumps(values))
    return str(workdir)


def test_table_from_fixture_workdirs(tmp_path):
    finished = _workdir(tmp_path, "c10", resnet18_cifar10.get_config(), {"test": {"accuracy": 0.9461, "step": 70000}})
    unfinished = _workdir(tmp_path, "c10_again", resnet18_cifar10.get_config())
    other = _workdir(tmp_path, "my_run", {"task": "classification"}, {"test": {"accuracy": 0.5, "step": 12}})
    table = report.main(["--baselines=configs/baselines", f"--output={tmp_path / 'results.md'}",
                         finished, unfinished, other])
    assert (tmp_path / "results.md").read_text() == table
    lines = table.splitlines()
    assert lines[0].startswith("| baseline | metric (split) | paper | ours |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    # Every baseline has a row; the one with runs has a row per run, the paper's number next to ours.
    assert set(baselines.NAMES) <= {line.split(" | ")[0].lstrip("| ") for line in lines[2:]}
    c10 = [line for line in lines if line.startswith("| resnet18_cifar10 |")]
    assert len(c10) == 2
    assert "95.28: DeVries & Taylor 2017" in c10[0] and "**94.61** (step 70000)" in c10[0]
    assert "| — |" in c10[1]
    assert "`python main.py --config=configs/baselines/resnet18_cifar10.py --workdir=WORKDIR`" in c10[0]
    assert "**50.00** (step 12)" in rows["my_run"]
    assert "| — |" in rows["bert_base_sst2"] and "93.5: Devlin et al. 2019" in rows["bert_base_sst2"]


def test_a_smoke_run_is_shown_as_one_not_as_a_result(tmp_path):
    smoke = _workdir(tmp_path, "c10_smoke", resnet18_cifar10.get_config("smoke"), {"test": {"accuracy": 0.097,
                                                                                            "step": 2}})
    real = _workdir(tmp_path, "c10", resnet18_cifar10.get_config(), {"test": {"accuracy": 0.9461, "step": 70000}})
    real_row, smoke_row = [line for line in report.main([smoke, real]).splitlines()
                           if line.startswith("| resnet18_cifar10 |")]  # In workdir order.
    assert "9.70 (smoke run, step 2)" in smoke_row and "**9.70**" not in smoke_row
    assert "**94.61** (step 70000)" in real_row
