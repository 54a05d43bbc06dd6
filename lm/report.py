"""Results table: each baseline's published number next to what our runs reached, as Markdown.

  python -m lm.report --baselines=configs/baselines /runs/resnet18_cifar10 /runs/minilm_sst2 ...
  python -m lm.report --baselines=configs/baselines --output=results.md gs://BUCKET/runs/*

A run is a workdir holding `config.json` and `metrics_<split>.json` (what training writes; the best checkpoint's
metrics). Its config's `baseline` section (configs/baselines/) names the baseline, the paper's number, the
metric and the split to compare; a run without one gets a row of its own with no paper number. With
`--baselines=FOLDER` every baseline config there gets a row, run or not, so the table lists what remains to
run. Workdirs may be on any file system `etils.epath` reads (local, gs://...).
"""

import argparse
import dataclasses
import importlib.util
import json
import sys

from etils import epath

from lm import files

PERCENT_METRICS = ("accuracy", "top5_accuracy", "f1_macro", "precision_macro", "recall_macro")


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    paper: float  # percent; < 0: no published number
    source: str
    metric: str
    split: str
    hardware: str
    time: str
    command: str
    ours: float | None = None  # the metric as the table shows it (percent for PERCENT_METRICS)
    step: int | None = None
    workdir: str = ""
    smoke: bool = False  # a run of the two-step smoke variant: its number is no result


def baseline_rows(folder: str) -> list[Row]:
    """One row, without a result, for each `*.py` config in `folder` that has a `baseline` section."""
    rows = []
    for path in sorted(epath.Path(folder).glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"_baseline_{path.stem}", str(path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        if "baseline" in config:
            rows.append(_row(config.baseline.to_dict()))
    return rows


def _row(baseline: dict, **result) -> Row:
    keys = ("name", "paper", "source", "metric", "split", "hardware", "time", "command")
    return Row(**{key: baseline[key] for key in keys}, smoke=bool(baseline.get("smoke", False)), **result)


def run_row(workdir: str) -> Row:
    """The row of one workdir: its baseline section (if any) and the metric it reached (if it finished)."""
    root = epath.Path(workdir)
    config = files.read_run_config(workdir, given_as="workdir")
    baseline = config.get("baseline") or {
        "name": root.name, "paper": -1.0, "source": "", "metric": "accuracy", "split": "test", "hardware": "",
        "time": "", "command": "",
    }
    metrics_path = root / f"metrics_{baseline['split']}.json"
    if not metrics_path.exists():
        return _row(baseline, workdir=workdir)
    metrics = json.loads(metrics_path.read_text())
    value = metrics[baseline["metric"]]
    ours = 100.0 * value if baseline["metric"] in PERCENT_METRICS else value
    return _row(baseline, ours=ours, step=metrics.get("step"), workdir=workdir)


def merge(baselines: list[Row], runs: list[Row]) -> list[Row]:
    """Every run, and each baseline that no run covers, in the baselines' order (runs of others last)."""
    order = {row.name: i for i, row in enumerate(baselines)}
    run_names = {row.name for row in runs}
    rows = [row for row in baselines if row.name not in run_names] + runs
    return sorted(rows, key=lambda row: (order.get(row.name, len(order)), row.workdir))


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"


def markdown(rows: list[Row]) -> str:
    """The table: baseline, metric, paper (with source), ours (with step), hardware and time, command."""
    lines = [
        "| baseline | metric (split) | paper | ours | hardware, expected time | command |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        paper = f"{_number(row.paper)}: {row.source}" if row.paper >= 0 else (row.source or "—")
        notes = (["smoke run"] if row.smoke else []) + ([f"step {row.step}"] if row.step else [])
        if row.ours is None:
            ours = "—"
        else:  # A smoke run is not bold: two steps of a tiny model check the pipeline, they measure nothing.
            value = f"{row.ours:.2f}" if row.smoke else f"**{row.ours:.2f}**"
            ours = f"{value} ({', '.join(notes)})" if notes else value
        hardware = ", ".join(part for part in (row.hardware, row.time) if part)
        command = f"`{row.command}`" if row.command else ""
        lines.append(f"| {row.name} | {row.metric} ({row.split}) | {paper} | {ours} | {hardware} | {command} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="*", help="run workdirs (config.json + metrics_<split>.json)")
    parser.add_argument("--baselines", default="", help="a folder of baseline configs: each gets a row")
    parser.add_argument("--output", default="", help="also write the table to this file")
    args = parser.parse_args(argv)
    baselines = baseline_rows(args.baselines) if args.baselines else []
    table = markdown(merge(baselines, [run_row(workdir) for workdir in args.workdirs]))
    if args.output:
        epath.Path(args.output).write_text(table)
    sys.stdout.write(table)
    return table


if __name__ == "__main__":
    main()
