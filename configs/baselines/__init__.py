"""Named configs for published baselines: one file per baseline, built on the experiment configs.

Each file's docstring states the paper's number and where it comes from, what our recipe changes, the hardware
and the expected time, and the command. `get_config("smoke")` is a tiny version that trains two steps on
mock or written data (tests/test_baselines.py). The config's `baseline` section carries the same facts into
the run's `config.json`, so that `python -m lm.report` can put the paper's number next to the run's:

  python main.py --config=configs/baselines/resnet18_cifar10.py --workdir=/runs/resnet18_cifar10
  python -m lm.report --baselines=configs/baselines /runs/*     # Markdown table: paper vs ours
"""

from collections.abc import Callable

import ml_collections

from configs import common

NAMES = (
    "bert_base_imdb",
    "bert_base_sst2",
    "bert_mini_sst2",
    "resnet50_imagenet",
    "vit_s16_imagenet",
    "vit_b16_imagenet",
    "resnet18_cifar10",
    "vgg16_cifar10",
    "minilm_sst2",
    "resnet_small_mnist",
)


def baseline_section(
    name: str, *, paper: float, source: str, hardware: str, time: str, flags: str = "", split: str = "test",
    metric: str = "accuracy", prepare: str = "", smoke: bool = False,
) -> ml_collections.ConfigDict:
    """The `config.baseline` section: what the paper reports and how to reproduce it.

    `paper` is in percent (-1: no published number for this setting; `source` then says what we compare
    with); `metric` is a key of `metrics_<split>.json`; `flags` are the command-line flags the run needs
    besides --config and --workdir; `prepare` a command that writes the data first; `smoke`: the config is the
    two-step smoke variant, whose result `python -m lm.report` shows as such, never as the baseline's.
    """
    command = f"python main.py --config=configs/baselines/{name}.py --workdir=WORKDIR"
    command = f"{prepare} && {command}" if prepare else command
    return ml_collections.ConfigDict({
        "name": name,
        "paper": float(paper),
        "source": source,
        "metric": metric,
        "split": split,
        "hardware": hardware,
        "time": time,
        "command": f"{command} {flags}".strip(),
        "smoke": smoke,
    })


def experiment(
    get_config: Callable[[str], ml_collections.ConfigDict], words: str, arg: str | None
) -> tuple[ml_collections.ConfigDict, bool]:
    """(`get_config(words)`, False), or with `arg` "smoke" its smoke config cut to two steps and True."""
    smoke = common.parse_arg(arg).smoke
    config = get_config(words + (",smoke" if smoke else ""))
    if smoke:  # Two steps, one evaluation, one checkpoint.
        config.update(num_train_steps=2, eval_every=2, checkpoint_every=2, log_every=1)
    return config, smoke
