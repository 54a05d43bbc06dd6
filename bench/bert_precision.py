"""BERT train step in float32, bfloat16 (mixed precision) and float32 with full remat: time and compiled memory.

All three are `lm.train.jit_train_step` on one CPU device (bench/common.py `Ours`), the same model, batch and
recipe as bench/bert_train_step.py; they alternate in rounds and the ratios are against float32 in the same run.
Memory is XLA's `memory_analysis()` of each compiled step: temporary buffers (activations kept for the
backward pass and scratch) and the arguments (state and batch).

  .venv/bin/python bench/bert_precision.py --size base --batch 4 --length 128 --rounds 3 --steps 1
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import bert_train_step  # noqa: E402  (bench/bert_train_step.py: the model config and batch)
import common  # noqa: E402  (bench/common.py)
import ml_collections  # noqa: E402

from lm import config_checks  # noqa: E402

CASES = {"float32": {}, "bfloat16": {"dtype": "bfloat16"}, "float32_remat_full": {"remat": "full"}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=tuple(bert_train_step.config_common.BERT_SIZES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per case per round")
    args = parser.parse_args(argv)
    base = bert_train_step.model_config(argparse.Namespace(**vars(args), no_dropout=False, seed=0))
    batch = bert_train_step.host_batch(argparse.Namespace(**vars(args), padding=0.0, seed=0), base.model.vocab_size)
    contenders, memory = {}, {}
    for name, model in CASES.items():
        config = ml_collections.ConfigDict(base.to_dict())
        config.model.update(model)
        contenders[name] = common.Ours(config_checks.resolved_copy(config), batch)
        analysis = contenders[name].step.memory_analysis()
        memory[name] = (analysis.temp_size_in_bytes, analysis.argument_size_in_bytes)
        print(f"  compiled {name}", flush=True)
    times = common.measure(contenders, args.rounds, args.steps).wall
    print(f"\nBERT-{args.size}, batch {args.batch} x {args.length} tokens, {common.cores()} cores; "
          "ratios: case / float32")
    print("| case | ms/step (median) | time ratio (paired median) | temp MB | temp ratio | arguments MB |")
    print("|---|---|---|---|---|---|")
    result = {}
    for name in CASES:
        paired = statistics.median(t / f for t, f in zip(times[name], times["float32"]))
        temp, arguments = memory[name]
        result[name] = {"ms": statistics.median(times[name]) * 1e3, "time_ratio": paired, "temp_mb": temp / 1e6,
                        "temp_ratio": temp / memory["float32"][0], "arguments_mb": arguments / 1e6}
        r = result[name]
        print(f"| {name} | {r['ms']:.0f} | {r['time_ratio']:.2f} | {r['temp_mb']:.0f} | {r['temp_ratio']:.2f} | "
              f"{r['arguments_mb']:.0f} |")
    print(f"\nrerun: {sys.executable} {' '.join(sys.argv)}")
    return result


if __name__ == "__main__":
    main()
