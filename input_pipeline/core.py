"""The shared core under every pipeline: split carving, per-host slices, epoch order, resume, padded evaluation.

`load_examples` asks the configured source (registry) for examples and wraps what it returns:

- in memory (`MemoryExamples`): splits the data does not give are carved out of train by the one seeded rule
  (`common.carve_splits`, stratified by label); evaluation splits are sliced i, i + n, ... per host; each
  training epoch is a fresh permutation seeded by (config.seed, epoch) of which host i takes block i of each
  global batch (`common.host_share`; `order_unit` is the host batch, 1 for a document stream).
- streamed (`StreamExamples`): the source's fixed per-host slices; each training epoch shuffled in a
  `config.data.shuffle_buffer`-long buffer seeded by (config.seed, epoch).

Training examples carry "index" (their place in the training split), which seeds per-example randomness.

`Pipeline` is the base of the three pipelines: it checks the config (batch sizes, the bad-example policy, the
split fractions, the source and its keys) before any data is read, then serves `train_iterator(start_step)`
(epochs of `steps_per_epoch` whole batches, resumed by arithmetic: whole epochs skipped by number, steps
inside one by skipping examples before preprocessing) and `eval_batches(split)` (every example once over all
hosts, padded with weight-0 examples so that every host yields the same number of batches). A pipeline says
which fields it reads (`FIELDS`), how it checks one record (`parse`), and how examples become batches.
"""

import abc
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline import registry
from input_pipeline.common import (
    SPLITS,
    BadExamples,
    carve_splits,
    check_batch_sizes,
    check_on_bad_example,
    eval_padding,
    host_counts,
    host_epoch_order,
    shuffle_seed,
    steps_per_epoch,
)
from input_pipeline.source import InMemory, Request, Streamed, size, take


def numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic, prefetched numpy batches."""
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options).as_numpy_iterator()


class MemoryExamples:
    """Splits held in memory (the source's, and those carved out of train); this host's share as tf.data."""

    counted = True

    def __init__(self, loaded: InMemory, request: Request, order_unit: int):
        config = request.config
        self.splits = complete_splits(loaded.splits, request.splits, config)
        self._seed, self._unit = config.seed, order_unit
        self._index, self._count = request.process_index, request.process_count
        self._tensors = {split: {k: tf.constant(v) for k, v in cols.items()} for split, cols in self.splits.items()}

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def host_counts(self, split: str) -> list[int]:
        return host_counts(size(self.splits[split]), self._count)

    def train_epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        indices = tf.numpy_function(self._host_order, [epoch], tf.int64, stateful=False)
        return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(indices, [None])).map(
            lambda i: {**self._gather("train", i), "index": i}
        )

    def _host_order(self, epoch: np.int64) -> np.ndarray:
        return host_epoch_order(self._seed, int(epoch), size(self.splits["train"]), self._index, self._count,
                                self._unit)

    def host_examples(self, split: str, host: int | None = None) -> tf.data.Dataset:
        host = self._index if host is None else host
        return tf.data.Dataset.range(host, size(self.splits[split]), self._count).map(lambda i: self._gather(split, i))

    def all_examples(self, split: str) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self._tensors[split])

    def _gather(self, split: str, index: tf.Tensor) -> dict[str, tf.Tensor]:
        return {field: tf.gather(values, index) for field, values in self._tensors[split].items()}


def complete_splits(given: dict, splits: tuple[str, ...], config: ml_collections.ConfigDict) -> dict:
    """The source's splits, plus those carved out of train by config.data.<split>_fraction > 0."""
    data = config.data
    fractions = {s: data[f"{s}_fraction"] for s in splits[1:] if s not in given and data[f"{s}_fraction"] > 0}
    train = given["train"]
    strata = train["label"] if "label" in train else None
    carved = carve_splits(size(train), fractions, config.seed, strata)
    result = {**given, **{split: take(train, indices) for split, indices in carved.items()}}
    if not size(result["train"]):
        raise ValueError(
            f"No training example is left after carving out {fractions} (fewer than one batch): add data or lower "
            f"config.data.{'/'.join(f'{s}_fraction' for s in fractions)}."
        )
    return result


class StreamExamples:
    """A streamed source's fixed per-host slices; the training split reshuffled each epoch in a buffer."""

    counted = False

    def __init__(self, loaded: Streamed, request: Request):
        self._datasets, self._counts = loaded.datasets, loaded.counts
        self._seed, self._buffer = request.config.seed, request.config.data.shuffle_buffer
        self._index = request.process_index
        offset = sum(self._counts["train"][: self._index])
        self._train = self._datasets["train"][self._index].enumerate(start=offset).map(
            lambda i, example: {**example, "index": i}
        )

    def has_split(self, split: str) -> bool:
        return split in self._counts

    def host_counts(self, split: str) -> list[int]:
        return self._counts[split]

    def train_epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        if self._buffer <= 1:
            return self._train
        seed = tf.numpy_function(lambda e: shuffle_seed(self._seed, int(e)), [epoch], tf.int64, stateful=False)
        return self._train.shuffle(self._buffer, seed=tf.ensure_shape(seed, []), reshuffle_each_iteration=False)

    def host_examples(self, split: str, host: int | None = None) -> tf.data.Dataset:
        return self._datasets[split][self._index if host is None else host]


def load_examples(config: ml_collections.ConfigDict, fields: tuple[str, ...], splits: tuple[str, ...],
                  process_index: int, process_count: int, parse, order_unit: int = 1,
                  every_host: bool = False) -> tuple[MemoryExamples | StreamExamples, InMemory | Streamed]:
    """This host's examples of config.data.source with the fields asked for; bad ones logged once (host 0)."""
    entry = registry.source(config.data.source, fields)
    bad = BadExamples(config.on_bad_example)
    request = Request(config, process_index, process_count, fields, splits, bad, parse, every_host)
    loaded = entry.load(request)
    _check_loaded(loaded, request)
    if process_index == 0:
        bad.log_summary()
    loaded.info["skipped_examples"] = bad.counts()
    loaded.info["bad_example_messages"] = {key: [message for _, message in found] for key, found in bad.skipped.items()}
    if isinstance(loaded, InMemory):
        return MemoryExamples(loaded, request, order_unit), loaded
    return StreamExamples(loaded, request), loaded


def _check_loaded(loaded: InMemory | Streamed, request: Request) -> None:
    """What a source returned has a training split and the fields the pipeline reads."""
    name = f"config.data.source={request.config.data.source!r} ({loaded.description})"
    splits = loaded.splits if isinstance(loaded, InMemory) else loaded.counts
    if "train" not in splits:
        raise ValueError(f"{name} gave no training split: set config.data.train_split, its files or its folder.")
    if isinstance(loaded, InMemory):
        for split, columns in loaded.splits.items():
            missing = set(request.fields) - set(columns)
            if missing or len({len(values) for values in columns.values()}) != 1:
                raise ValueError(
                    f"{name}: split {split!r} must hold the fields {request.fields} as columns of one length; it has "
                    f"{ {field: len(values) for field, values in columns.items()} }."
                )


def check_source(config: ml_collections.ConfigDict, fields: tuple[str, ...]) -> registry.SourceEntry:
    """The configured source (it must serve `fields`) after its own check of its config keys."""
    entry = registry.source(config.data.source, fields)
    if entry.check is not None:
        entry.check(config, fields)
    return entry


def check_fractions(data: ml_collections.ConfigDict, splits: tuple[str, ...]) -> None:
    fractions = {f"{split}_fraction": data[f"{split}_fraction"] for split in splits[1:]}
    if any(not 0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise ValueError(
            f"config.data fractions {fractions} must each be in [0, 1) and sum to less than 1: the rest is train."
        )


class Pipeline(abc.ABC):
    """Per-host batches of one kind of example; see the module docstring. Subclasses fill in the hooks."""

    FIELDS: tuple[str, ...] = ()
    SPLITS: tuple[str, ...] = SPLITS
    EVERY_HOST = False  # The source builds every host's stream (to count what each host's examples pack into).

    def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
        check_batch_sizes(config, process_count)
        check_on_bad_example(config.on_bad_example)
        check_fractions(config.data, self.SPLITS)
        self.source = check_source(config, self.FIELDS)
        self.check_config(config)
        self._process_index, self._process_count = process_index, process_count
        self.train_batch_size: int = config.global_batch_size // process_count
        self.eval_batch_size: int = config.eval_batch_size // process_count
        self.prepare(config)
        self.examples, loaded = load_examples(config, self.FIELDS, self.SPLITS, process_index, process_count,
                                              self.parse, self.order_unit(), self.EVERY_HOST)
        # Examples left out under config.on_bad_example='skip', by the config key they were read under.
        self.skipped_examples: dict[str, int] = loaded.info["skipped_examples"]
        self.bad_example_messages: dict[str, list[str]] = loaded.info["bad_example_messages"]  # "FILE line N: why"
        self.loaded(config, loaded)
        self.num_train_examples, self.steps_per_epoch = self.count_train(config)
        for split in self.SPLITS[1:]:
            if self.examples.has_split(split) and self.num_examples(split) == 0:
                raise ValueError(
                    f"The {split} split is empty: check config.data.{split}_split, its files or folder, or "
                    f"config.data.{split}_fraction (too small for the data?)."
                )

    # Hooks. ---------------------------------------------------------------------------------------------

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """The pipeline's own config keys, before any data is read."""
        del config  # None by default.

    def prepare(self, config: ml_collections.ConfigDict) -> None:
        """What the pipeline needs before reading data (a tokenizer)."""
        del config  # Nothing by default.

    def parse(self, record: dict) -> dict | None:
        """One record read from the user's files -> the example; raise common.BadExample for a bad one."""
        return record

    def loaded(self, config: ml_collections.ConfigDict, loaded: InMemory | Streamed) -> None:
        """What the pipeline takes from the source's metadata (class names, image defaults)."""
        del config, loaded  # Nothing by default.

    def serving_facts(self) -> dict:
        """What a served model needs from the data besides the config (JSON): e.g. class names, image preprocessing."""
        return {}

    def order_unit(self) -> int:
        return self.train_batch_size

    def count_train(self, config: ml_collections.ConfigDict) -> tuple[int, int]:
        """(training examples over all hosts, whole batches per epoch: equal on every host)."""
        counts = self.examples.host_counts("train")
        return sum(counts), steps_per_epoch(counts, self.train_batch_size, config.global_batch_size)

    def train_examples(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """Per-example preprocessing of training examples (dicts with "index" and "epoch")."""
        return ds

    def train_batches(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """Per-batch preprocessing of training batches."""
        return ds

    @abc.abstractmethod
    def eval_examples(self, split: str) -> tf.data.Dataset:
        """This host's examples of the split, preprocessed, with "weight" 1.0."""

    @abc.abstractmethod
    def eval_padding(self) -> dict[str, tf.Tensor]:
        """One padding example in the form `eval_examples` yields, with "weight" 0.0."""

    def eval_counts(self, split: str) -> list[int]:
        """What each host's `eval_examples(split)` yields."""
        return self.examples.host_counts(split)

    def eval_batches_map(self, ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
        """Per-batch preprocessing of evaluation batches."""
        return ds

    # The shared loops. ------------------------------------------------------------------------------------

    def num_examples(self, split: str) -> int:
        """Examples of the split over all hosts; 0 for a split the config does not define."""
        self._check_split_name(split)
        return sum(self.examples.host_counts(split)) if self.examples.has_split(split) else 0

    def train_iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Infinite per-host training batches; `start_step=k` yields what `start_step=0` yields from batch k."""
        epoch, step = divmod(start_step, self.steps_per_epoch)
        per_epoch = self.steps_per_epoch * self.train_batch_size

        def epoch_examples(e: tf.Tensor) -> tf.data.Dataset:
            return self.examples.train_epoch(e).take(per_epoch).map(lambda example: {**example, "epoch": e})

        ds = tf.data.Dataset.counter(epoch).flat_map(epoch_examples).skip(step * self.train_batch_size)
        ds = self.train_examples(ds).batch(self.train_batch_size, drop_remainder=True)
        return numpy_batches(self.train_batches(ds))

    def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Per-host batches of the split once, padded with weight-0 examples; the same count on every host."""
        self._check_split_name(split)
        if not self.examples.has_split(split):
            raise ValueError(
                f"The config defines no {split} split: set config.data.{split}_split (TFDS), or "
                f"config.data.{split}_files, config.data.{split}_dir or config.data.{split}_fraction > 0 (data "
                "held in memory)."
            )
        num_padding = eval_padding(self.eval_counts(split), self._process_index, self.eval_batch_size)
        padding = tf.data.Dataset.from_tensors(self.eval_padding()).repeat(num_padding)
        ds = self.eval_examples(split).concatenate(padding).batch(self.eval_batch_size, drop_remainder=True)
        return numpy_batches(self.eval_batches_map(ds, split))

    def _check_split_name(self, split: str) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"Unknown split {split!r}; use one of {self.SPLITS}.")
