"""What every input pipeline shares: split names, split carving, per-host slicing, epoch seeds, padding, batch sizes.

Plain Python and numpy, no TensorFlow: `lm.config_checks` imports it, and the train step's code path (and
bench/accelerator.py with it) runs where TensorFlow is not installed.

Host i of n takes examples i, i + n, ... of an evaluation split, and block i of each global batch of a
training epoch held in memory (`host_share`); every host takes the same number of training steps
(the smallest share decides) and of evaluation batches (the largest share decides, the rest is padding).
"""

import logging
import math

import ml_collections
import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
ON_BAD_EXAMPLE = ("error", "skip")
# Stream ids for numpy's SeedSequence: each use of the config seed draws independently.
SPLIT_STREAM, EPOCH_STREAM, AUGMENT_STREAM, MIXUP_STREAM = 1, 2, 3, 4


def host_counts(num_examples: int, process_count: int) -> list[int]:
    """Examples per host when host i takes examples i, i + process_count, ..."""
    return [len(range(i, num_examples, process_count)) for i in range(process_count)]


def host_share(order: np.ndarray, process_index: int, process_count: int, host_batch_size: int) -> np.ndarray:
    """This host's training examples of an epoch visited in `order`: block `process_index` of each global batch.

    Global batch k, assembled from the hosts' batches in host order, is then order[k * G : (k + 1) * G] (G the
    global batch size) whatever the process count, example for example and device for device: 2 processes x 4
    devices train on what 1 process x 8 devices does. The tail that fills no global batch is dealt out in turn,
    so a host holds as many examples as `host_counts` says.
    """
    global_batch = host_batch_size * process_count
    whole = len(order) // global_batch * global_batch
    blocks = order[:whole].reshape(-1, process_count, host_batch_size)[:, process_index].reshape(-1)
    return np.concatenate([blocks, order[whole:][process_index::process_count]])


def epoch_seed(seed: int, epoch: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, EPOCH_STREAM, epoch])


def shuffle_seed(seed: int, epoch: int) -> np.int64:
    """The tf.data shuffle seed of epoch `epoch` (streamed sources shuffle in a buffer with it)."""
    return np.int64(epoch_seed(seed, epoch).generate_state(1, np.uint64)[0] >> np.uint64(1))


def host_epoch_order(seed: int, epoch: int, num_examples: int, process_index: int, process_count: int,
                     host_batch_size: int) -> np.ndarray:
    """Indices (int64) of this host's training examples in epoch `epoch`: a seeded shuffle, then `host_share`."""
    permutation = np.random.default_rng(epoch_seed(seed, epoch)).permutation(num_examples)
    return host_share(permutation, process_index, process_count, host_batch_size).astype(np.int64)


def carve_splits(num_examples: int, fractions: dict[str, float], seed: int,
                 strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Indices (sorted: file order kept) of each split carved out of a training set, and of what stays "train".

    The one rule of every in-memory source: split s (in the order of `fractions`) takes
    max(1, round(fraction_s * num_examples)) examples, dealt over the strata (the classes, when given) in
    proportion to their sizes, largest remainders first; each stratum is drawn in an order seeded by
    (seed, SPLIT_STREAM). Without strata it is one seeded permutation cut into consecutive pieces.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAM]))
    strata = np.zeros(num_examples, np.int64) if strata is None else np.asarray(strata)
    groups = [rng.permutation(np.flatnonzero(strata == stratum)) for stratum in np.unique(strata)]
    sizes = np.array([len(group) for group in groups], np.int64)
    taken = np.zeros(len(groups), np.int64)
    carved = {}
    for split, fraction in fractions.items():
        quotas = np.minimum(_apportion(max(1, round(fraction * num_examples)), sizes), sizes - taken)
        carved[split] = _sorted_concat([g[t : t + q] for g, t, q in zip(groups, taken, quotas, strict=True)])
        taken += quotas
    carved["train"] = _sorted_concat([group[t:] for group, t in zip(groups, taken, strict=True)])
    return carved


def _apportion(total: int, sizes: np.ndarray) -> np.ndarray:
    """`total` dealt over groups in proportion to `sizes`: floors, then one more to the largest remainders."""
    exact = total * sizes / max(int(sizes.sum()), 1)
    quotas = np.floor(exact).astype(np.int64)
    quotas[np.argsort(-(exact - quotas), kind="stable")[: total - int(quotas.sum())]] += 1
    return quotas


def _sorted_concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


class BadExample(ValueError):
    """Raised by a pipeline's check of one example read from the user's data: what is wrong with it."""


def check_on_bad_example(value: object) -> None:
    if value not in ON_BAD_EXAMPLE:
        raise ValueError(
            f"config.on_bad_example={value!r}: use 'error' (stop at the first bad example, naming its file and "
            "row) or 'skip' (leave bad examples out, count them and log the count)."
        )


class BadExamples:
    """Bad examples met while reading: raised at once (policy 'error') or recorded and skipped ('skip').

    `skipped[name]` lists (file, "FILE line N: what is wrong") for each example left out of the data read
    under `name` (a key of config.data such as "train_files", or a whole key such as "serving.input_files");
    `counts()` gives how many per name.
    """

    def __init__(self, policy: str):
        check_on_bad_example(policy)
        self.policy = policy
        self.skipped: dict[str, list[tuple[str, str]]] = {}

    def report(self, name: str, path: str, message: str) -> None:
        """`message` says where and what ("FILE line 3: the text is empty."); raises under 'error'."""
        if self.policy == "error":
            raise ValueError(
                f"{message} Fix or remove this example, or set config.on_bad_example='skip' to leave bad "
                "examples out (they are counted and logged)."
            )
        self.skipped.setdefault(name, []).append((path, message))

    def counts(self) -> dict[str, int]:
        return {name: len(found) for name, found in self.skipped.items()}

    def log_summary(self) -> None:
        """One warning per name that skipped examples: the count, the files, and the first problem."""
        for name, found in self.skipped.items():
            files = dict.fromkeys(path for path, _ in found)
            per_file = ", ".join(f"{path} ({sum(p == path for p, _ in found)})" for path in files)
            log.warning(
                "config.on_bad_example='skip': skipped %d bad example(s) of config.%s: %s. First: %s",
                len(found), name if "." in name else f"data.{name}", per_file, found[0][1],
            )


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
