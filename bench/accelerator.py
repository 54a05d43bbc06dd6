"""One command for a lent GPU or TPU: our train step on BERT-base, ResNet-50 and ViT-B/16 in bfloat16, with MFU.

Cases (each `lm.train.jit_train_step`, built as the trainer builds it, on one device, config.model.dtype=bfloat16):
  bert_base_128   BERT-base masked LM (configs/bert_pretrain.py:base), length 128, 15% of positions predicted
  bert_base_512   the same at length 512
  resnet50        ResNet-50 at 224x224 (configs/vision_classification.py:resnet50,imagenet2012)
  vit_b16         ViT-B/16 at 224x224 (configs/vision_classification.py:vit_b16,imagenet2012)
Each case takes the largest batch that fits, found by a short search on the compiled program's memory, without
running it: compile at --start-batch and twice that, fit memory = a + b x batch through the two
(`lm.preflight.step_memory`), compile the largest multiple of 8 below --memory-fraction of the device's
`bytes_limit` (shrinking by a sixth while it does not fit, at most 3 times), then run. A step that still runs out
of memory at run time halves the batch once. Without a device limit (CPU) the batch stays at --start-batch
unless --memory-limit-bytes gives one. Timing uses bench/common.py's `measure` (rounds of --steps steps after
two warm-up steps); the table gives the median step time, examples/s, FLOPs per step from XLA's cost analysis,
and MFU against the device kind's datasheet peak (lm/hardware.py; on kinds it does not know, a measured matmul,
labelled). Cases left when --budget-s is spent are skipped and say so; the default fits in 8 minutes.

Usage:
  python bench/accelerator.py --json /tmp/accelerator.json   # on the lent GPU or TPU; one device
  python bench/accelerator.py --tiny                         # CPU, tiny models (tests/test_bench_accelerator.py)
"""

import argparse
import dataclasses
import importlib
import importlib.metadata
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402
import numpy as np  # noqa: E402

import configs.bert_pretrain  # noqa: E402
import configs.vision_classification  # noqa: E402
from lm import config_checks, experiment, metrics, optimizers, preflight, sharding, train  # noqa: E402
from lm import state as state_lib  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py)

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config_arg: str  # configs/bert_pretrain.py or configs/vision_classification.py argument
    length: int = 0  # text: tokens per example
    image_size: int = 0  # images: pixels per side


CASES = (
    Case("bert_base_128", "base", length=128),
    Case("bert_base_512", "base", length=512),
    Case("resnet50", "resnet50,imagenet2012", image_size=224),
    Case("vit_b16", "vit_b16,imagenet2012", image_size=224),
)
TINY_CASES = (  # The same code paths at CPU sizes: a 2-layer BERT and the smoke ResNet and ViT.
    Case("bert_base_128", "tiny", length=16),
    Case("bert_base_512", "tiny", length=32),
    Case("resnet50", "resnet50,imagenet2012,smoke", image_size=16),
    Case("vit_b16", "vit_b16,imagenet2012,smoke", image_size=16),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the script, measures nothing")
    parser.add_argument("--cases", default="", help="comma-separated subset of " + ",".join(c.name for c in CASES))
    parser.add_argument("--start-batch", type=int, default=0, help="first batch of the search (default 32; tiny 8)")
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--memory-fraction", type=float, default=0.85, help="of the device's bytes_limit")
    parser.add_argument("--memory-limit-bytes", type=int, default=0, help="search under this limit instead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (default 10; tiny 1)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the cases left after this many seconds")
    parser.add_argument("--json", default="", help="write the results to this path")
    args = parser.parse_args(argv)
    cases = TINY_CASES if args.tiny else CASES
    names = [n.strip() for n in args.cases.split(",") if n.strip()] or [c.name for c in cases]
    unknown = sorted(set(names) - {c.name for c in cases})
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {','.join(c.name for c in cases)}.")
    args.selected = [c for c in cases if c.name in names]
    args.start_batch = args.start_batch or (8 if args.tiny else 32)
    args.steps = args.steps or (1 if args.tiny else 10)
    return args


def case_config(case: Case, tiny: bool):
    if case.length:
        config = configs.bert_pretrain.get_config(case.config_arg)
        config.data.max_length = case.length
        if tiny:
            config.model.vocab_size = 512
    else:
        config = configs.vision_classification.get_config(case.config_arg)
        config.data.image_size = case.image_size
    config.model.dtype = "bfloat16"
    config.mesh.data = 1
    config.num_train_steps = common.TOTAL_STEPS
    return config


def host_batch(case: Case, config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if case.length:
        shape, vocab = (batch, case.length), config.model.vocab_size
        return {"input_ids": rng.integers(1, vocab, shape, dtype=np.int32),
                "attention_mask": np.ones(shape, np.int32), "token_type_ids": np.zeros(shape, np.int32),
                "mlm_labels": rng.integers(1, vocab, shape, dtype=np.int32),
                "mlm_weights": (rng.random(shape) < 0.15).astype(np.float32)}
    size = case.image_size
    return {"image": rng.standard_normal((batch, size, size, 3), dtype=np.float32),
            "label": rng.integers(0, config.model.num_classes, batch, dtype=np.int32)}


class Step:
    """The jitted train step of a config on one device; compiles for a batch size from shapes alone."""

    def __init__(self, case: Case, config):
        self.case = case
        self.config = config_checks.resolved_copy(config)
        self.mesh = sharding.create_mesh(self.config.mesh, jax.devices()[:1])
        tx, schedule = optimizers.create_optimizer(self.config.optimizer, common.TOTAL_STEPS, self.config.model)
        self.spec = state_lib.state_spec(self.config.model, tx, self.mesh, self.config.axis_rules, self.config.seed)
        self.exp = experiment.Experiment(
            config=self.config, mesh=self.mesh, data=None, task=experiment.create_task(self.config), tx=tx,
            schedule=schedule, spec=self.spec, total_steps=common.TOTAL_STEPS, steps_per_epoch=common.TOTAL_STEPS,
            eval_every=common.TOTAL_STEPS)
        self.jitted = train.jit_train_step(self.exp)

    def compile(self, batch: int):
        shapes = {key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding.batch_sharding(self.mesh))
                  for key, value in host_batch(self.case, self.config, batch).items()}
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(self.spec.abstract, shapes).compile()


class Compiled(common.Ours):
    """`common.Ours` (its run and loss) around a step compiled by the batch search, with a fresh state and batch."""

    def __init__(self, step: Step, compiled, batch: int):  # Not Ours.__init__: the step is compiled already.
        self.mesh, self.step = step.mesh, compiled
        with jax.set_mesh(self.mesh):
            self.state = state_lib.init_state(step.config.model, step.exp.tx, step.spec, step.config.seed)
            self.batch = sharding.global_batch(host_batch(step.case, step.config, batch), self.mesh)
        self.flops = train.step_flops(compiled)
        self.metrics = None


def memory_of(compiled) -> int:
    memory = preflight.step_memory(compiled)
    return 0 if memory is None else memory["total"]


def largest_batch(step: Step, args: argparse.Namespace, limit: int | None) -> tuple[int, object, list]:
    """(batch, its compiled step, the search's (batch, bytes) trials)."""
    start = args.start_batch
    compiled = step.compile(start)
    trials = [(start, memory_of(compiled))]
    if limit is None:
        return start, compiled, trials
    budget = args.memory_fraction * limit
    double = step.compile(2 * start)
    trials.append((2 * start, memory_of(double)))
    per_example = max((trials[1][1] - trials[0][1]) / start, 1.0)
    fixed = trials[0][1] - per_example * start
    batch = min(args.max_batch, max(int((budget - fixed) / per_example) // 8 * 8, 8))
    for _ in range(4):
        if batch in (start, 2 * start):
            candidate = compiled if batch == start else double
        else:
            candidate = step.compile(batch)
            trials.append((batch, memory_of(candidate)))
        if memory_of(candidate) <= budget or batch <= 8:
            return batch, candidate, trials
        batch = max(int(batch * 5 / 6) // 8 * 8, 8)
    return batch, step.compile(batch), trials


def device_limit(args: argparse.Namespace) -> int | None:
    return args.memory_limit_bytes or preflight.device_bytes_limit(jax.devices()[0])


def run_case(case: Case, args: argparse.Namespace, limit: int | None, peak) -> dict:
    start_time = time.perf_counter()
    config = case_config(case, args.tiny)
    step = Step(case, config)
    batch, compiled, trials = largest_batch(step, args, limit)
    try:
        contender = Compiled(step, compiled, batch)
        contender.run(2)  # Warm-up.
    except Exception as error:  # Out of memory at run time although the compiled program fitted: halve once.
        if "RESOURCE_EXHAUSTED" not in str(error) and "out of memory" not in str(error).lower():
            raise
        batch = max(batch // 2, 1)
        contender = Compiled(step, step.compile(batch), batch)
        contender.run(2)
    timing = common.measure({"ours": contender}, args.rounds, args.steps, digits=1)
    seconds = float(np.median(timing.wall["ours"]))
    return {"case": case.name, "config": case.config_arg, "batch": batch, "length": case.length,
            "image_size": case.image_size, "step_ms": seconds * 1e3, "examples_per_second": batch / seconds,
            "flops_per_step": contender.flops, "mfu": contender.flops / seconds / peak.flops_per_second,
            "mfu_name": metrics.mfu_name(peak), "peak_flops_per_second": peak.flops_per_second,
            "peak_label": peak.label, "step_memory_gib": memory_of(compiled) / GIB,
            "batch_search": [[b, m / GIB] for b, m in trials], "loss": contender.loss(),
            "case_seconds": time.perf_counter() - start_time}


def print_table(result: dict) -> None:
    print(f"\n{result['device']}, bfloat16, one device; memory limit {result['memory_limit_gib']}")
    print(result["versions"])
    print(f"{'case':<15}{'batch':>7}{'step ms':>10}{'examples/s':>12}{'TFLOP/step':>12}{'MFU':>8}  peak")
    for row in result["rows"]:
        if "skipped" in row:
            print(f"{row['case']:<15}  skipped: {row['skipped']}")
            continue
        mfu = f"{100 * row['mfu']:.1f}%" + ("*" if row["mfu_name"] != "mfu" else "")
        print(f"{row['case']:<15}{row['batch']:>7}{row['step_ms']:>10.1f}{row['examples_per_second']:>12.1f}"
              f"{row['flops_per_step'] / 1e12:>12.3f}{mfu:>8}  {row['peak_label']}")
    if any(row.get("mfu_name", "mfu") != "mfu" for row in result["rows"]):
        print("* against a measured matmul, not a datasheet peak: this device kind is not in lm/hardware.py")
    print(f"total {result['seconds']:.0f} s; rerun: {result['command']}")


def versions() -> str:
    """The versions the figures depend on (a reported table names them); a package without metadata (installed
    from source) gives its module's __version__."""
    found = []
    for name in ("jax", "jaxlib", "flax", "optax"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
    return f"{', '.join(found)}, Python {sys.version.split()[0]}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    started, packages = time.perf_counter(), versions()  # First: nothing after the cases may fail for want of it.
    limit = device_limit(args)
    device = jax.devices()[0]
    peak = metrics.mfu_peak(case_config(args.selected[0], args.tiny))  # The same for all cases: bfloat16.
    rows = []
    for case in args.selected:
        if time.perf_counter() - started > args.budget_s:
            rows.append({"case": case.name, "skipped": f"--budget-s {args.budget_s:.0f} spent"})
            continue
        print(f"{case.name}: searching the batch and compiling on {device.device_kind}", flush=True)
        rows.append(run_case(case, args, limit, peak))
    script = os.path.relpath(os.path.abspath(__file__))
    result = {"device": f"{device.platform} {device.device_kind}", "rows": rows,
              "memory_limit_gib": "none" if limit is None else f"{limit / GIB:.1f} GiB", "versions": packages,
              "seconds": time.perf_counter() - started,
              "command": " ".join([sys.executable, script, *(sys.argv[1:] if argv is None else argv)])}
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
