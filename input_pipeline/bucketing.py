"""Length bucketing for text batches: each batch cut to the smallest of a few static lengths that holds it.

Batches are formed exactly as without bucketing (the same examples in the same order, so the epoch order and
resume by step are untouched), then each is padded to the bucket of its longest example: PyTorch's per-batch
padding, quantized to a few lengths so that a jitted step compiles once per bucket (jax.jit keeps one program
per input shape). Forming batches per bucket instead would reorder the examples and make resume depend on
the fill of each bucket's queue.

The global batch of a step is assembled from the hosts' batches, which must share one shape: every host pads
to the bucket of the longest example of the GLOBAL batch.
- One host: its batch is the global batch; its longest example is read in the graph.
- Several hosts, data in memory: `GlobalLengths` counts the tokens of every example of a split once (one
  tokenization pass) and, from the epoch order (`common.host_share`: global batch k of an epoch is
  order[k * G : (k + 1) * G] whatever the process count), each step's longest; every host computes the same.
  Evaluation: host h holds examples h, h + n, ... padded with empty texts; batch b of every host is the global
  batch b, so its length is the longest over the hosts' slices.
- Several hosts, streamed source: a host cannot see the others' examples; batches keep `max_length`.
"""

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline.common import host_epoch_order

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
PADDING_LENGTH = 2  # An empty text (the weight-0 evaluation padding) is [CLS] [SEP].


def bucket_lengths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """config.data.bucket_lengths below config.data.max_length, then max_length; (max_length,) = bucketing off."""
    given, max_length = tuple(config.data.bucket_lengths), config.data.max_length
    if any(not isinstance(b, int) or isinstance(b, bool) or b < 2 for b in given) or list(given) != sorted(set(given)):
        raise ValueError(
            f"config.data.bucket_lengths={given} must be increasing integers >= 2 (token lengths), e.g. "
            "(16, 32, 64, 128); () turns bucketing off (every batch padded to config.data.max_length)."
        )
    return tuple(b for b in given if b < max_length) + (max_length,)


def smallest_bucket(lengths: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
    """The smallest bucket >= each length (lengths never exceed the last bucket, max_length)."""
    return np.asarray(buckets)[np.searchsorted(buckets, lengths)]


def cut(batch: dict[str, tf.Tensor], length: tf.Tensor) -> dict[str, tf.Tensor]:
    """The batch's token tensors (TF or numpy) cut to `length` (>= its longest example: only padding is dropped)."""
    return {key: value[:, :length] if key in TOKEN_KEYS else value for key, value in batch.items()}


def cut_to_own_longest(batch: dict[str, tf.Tensor], buckets: tuple[int, ...]) -> dict[str, tf.Tensor]:
    """One host: the batch cut to the bucket of its longest example, in the graph."""
    longest = tf.reduce_max(tf.reduce_sum(batch["attention_mask"], axis=1))
    table = tf.constant(buckets, tf.int32)
    return cut(batch, tf.gather(table, tf.searchsorted(table, longest[tf.newaxis]))[0])


def cut_host_batch(batch: dict[str, np.ndarray], buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Numpy arrays (serving, predict): the batch's token arrays cut to the bucket of its longest example."""
    return cut(batch, int(smallest_bucket(np.asarray([batch["attention_mask"].sum(axis=1).max()]), buckets)[0]))


class GlobalLengths:
    """Several hosts, data in memory: the padded length of each global batch, the same on every host."""

    def __init__(self, buckets: tuple[int, ...], seed: int, global_batch_size: int, process_count: int,
                 eval_batch_size: int, token_lengths):
        self._buckets, self._seed = buckets, seed
        self._global_batch, self._count, self._eval_batch = global_batch_size, process_count, eval_batch_size
        self._token_lengths = token_lengths  # split -> int array of each example's token count (cached by caller)
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def train_length(self, epoch: np.int64, first_index: np.int64) -> np.int32:
        """The length of the global training batch holding example `first_index` in epoch `epoch`."""
        epoch = int(epoch)
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            lengths = self._token_lengths("train")
            order = host_epoch_order(self._seed, epoch, len(lengths), 0, 1, self._global_batch)
            whole = len(order) // self._global_batch * self._global_batch
            per_step = lengths[order[:whole]].reshape(-1, self._global_batch).max(axis=1)
            of_example = np.zeros(len(lengths), np.int32)
            of_example[order[:whole]] = np.repeat(smallest_bucket(per_step, self._buckets), self._global_batch)
            self._epoch_cache = (epoch, of_example)
        return np.int32(self._epoch_cache[1][int(first_index)])

    def eval_lengths(self, split: str) -> np.ndarray:
        """The length of each global evaluation batch of the split (host h holds examples h, h + n, ...)."""
        lengths = self._token_lengths(split)
        host_batch = self._eval_batch // self._count
        num_batches = -(-len(range(0, len(lengths), self._count)) // host_batch)
        longest = np.full(num_batches * host_batch, PADDING_LENGTH, np.int64)
        for host in range(self._count):
            share = lengths[host :: self._count]
            longest[: len(share)] = np.maximum(longest[: len(share)], share)
        return smallest_bucket(longest.reshape(num_batches, host_batch).max(axis=1), self._buckets).astype(np.int32)


def token_lengths(texts: tf.data.Dataset, tokenizer) -> np.ndarray:
    """Each text's token count ([CLS] and [SEP] included, at most max_length), in order."""
    counts = texts.batch(1024).map(lambda t: tf.reduce_sum(tokenizer(t)["attention_mask"], axis=1))
    return np.concatenate([np.zeros(0, np.int64), *counts.as_numpy_iterator()]).astype(np.int64)
