"""`--mode=predict` against `--mode=eval` on the same labelled split: wall time of each whole run, same process.

    .venv/bin/python bench/predict_throughput.py --examples 4096 --rounds 3

A BERT of `--size` (mini by default) is trained for one step on synthetic reviews (the weights do not matter
for speed; serve_load.py's workdir); `--examples` synthetic reviews (8-40 words) are written as a labelled CSV
that is both eval's `config.data.test_files` (with `config.eval_split=test`) and predict's
`config.serving.input_files`, with the same `config.eval_batch_size` and the run's length buckets. Each round
runs eval, then predict, as a user would (`lm.run`: load the checkpoint, read the data, compute, write the
result); the first round fills the persistent compilation cache and is not counted, so the timed rounds
compare the data path and the computation, not compiles. The table gives the median examples/s of each and
the median of the per-round ratios predict / eval (the issue's goal: predict within 10% of eval).
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402
import numpy as np  # noqa: E402

import lm  # noqa: E402
from bench.serve_load import make_text_workdir, review  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="mini")
    parser.add_argument("--length", type=int, default=128, help="max_length of the run")
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64, help="config.eval_batch_size of both")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, after one untimed round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jax.config.update("jax_compilation_cache_dir", os.path.join(tmp, "jax-cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        config, workdir = make_text_workdir(pathlib.Path(tmp), args)
        rng = np.random.default_rng(1)
        split = pathlib.Path(tmp) / "split.csv"
        split.write_text("review,label\n" + "".join(f"{review(rng)},{i % 2}\n" for i in range(args.examples)))
        config.data.test_files = str(split)
        config.eval_split = "test"
        config.eval_batch_size = args.batch
        config.serving.input_files = str(split)
        config.serving.output = os.path.join(tmp, "predictions.jsonl")
        times: dict[str, list[float]] = {"eval": [], "predict": []}
        for round_index in range(args.rounds + 1):
            for mode in ("eval", "predict"):
                start = time.perf_counter()
                lm.run(config, workdir, mode)
                if round_index:  # Round 0 compiles.
                    times[mode].append(time.perf_counter() - start)
            if round_index:
                print(f"round {round_index}: eval {times['eval'][-1]:.2f} s, predict {times['predict'][-1]:.2f} s",
                      flush=True)
    rate = {mode: args.examples / statistics.median(t) for mode, t in times.items()}
    ratio = statistics.median(e / p for e, p in zip(times["eval"], times["predict"]))
    print(f"\nBERT-{args.size}, {args.examples} examples (max_length {args.length}), eval_batch_size {args.batch}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), load average {os.getloadavg()[0]:.1f}")
    print("| mode | median s per run | examples/s |")
    print("|---|---|---|")
    for mode, t in times.items():
        print(f"| {mode} | {statistics.median(t):.2f} | {rate[mode]:.1f} |")
    print(f"\npredict / eval throughput (median of per-round ratios): {ratio:.3f}")
    print(f"rerun: .venv/bin/python bench/predict_throughput.py --size {args.size} --length {args.length} "
          f"--examples {args.examples} --batch {args.batch} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
