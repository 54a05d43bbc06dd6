"""What every input pipeline shares: split names, per-host slicing, epoch seeds, padding, numpy batches.

Host i of n takes examples i, i + n, ... of a split; every host takes the same number of training steps
(the smallest share decides) and of evaluation batches (the largest share decides, the rest is padding).
"""

import math
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

SPLITS = ("train", "validation", "test")
# Stream ids for numpy's SeedSequence: each use of the config seed draws independently.
SPLIT_STREAM, EPOCH_STREAM, AUGMENT_STREAM, MIXUP_STREAM = 1, 2, 3, 4


def host_counts(num_examples: int, process_count: int) -> list[int]:
    """Examples per host when host i takes examples i, i + process_count, ..."""
    return [len(range(i, num_examples, process_count)) for i in range(process_count)]


def epoch_seed(seed: int, epoch: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, EPOCH_STREAM, epoch])


def check_batch_sizes(config: ml_collections.ConfigDict, process_count: int) -> None:
    for key in ("global_batch_size", "eval_batch_size"):
        if config[key] <= 0 or config[key] % process_count:
            raise ValueError(
                f"config.{key}={config[key]} must be a positive multiple of the process count ({process_count}) "
                f"so that each host gets an equal batch; set it to a multiple of {process_count}."
            )


def steps_per_epoch(train_host_counts: list[int], host_batch_size: int, global_batch_size: int) -> int:
    """Whole batches per epoch, equal on every host: the smallest host share decides."""
    steps = min(train_host_counts) // host_batch_size
    if steps == 0:
        raise ValueError(
            f"The training set ({sum(train_host_counts)} examples, {len(train_host_counts)} host(s)) is smaller "
            f"than one batch: lower config.global_batch_size={global_batch_size} or add data."
        )
    return steps


def eval_padding(counts: list[int], process_index: int, host_batch_size: int) -> int:
    """Weight-0 examples this host appends so that every host yields the same number of full batches."""
    return math.ceil(max(counts) / host_batch_size) * host_batch_size - counts[process_index]


def numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic, prefetched numpy batches."""
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options).as_numpy_iterator()
