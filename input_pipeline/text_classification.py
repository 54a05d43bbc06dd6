"""Text classification input: TFDS or the user's CSV/TSV/JSONL files -> tokenized per-host numpy batches.

`TextClassificationData(config, process_index, process_count)` validates the data section of the config
and the data itself (files are read whole; TFDS features and split sizes come from the dataset's metadata)
before anything compiles, then serves:

- `train_iterator(start_step)`: infinite per-host batches of `global_batch_size // process_count`.
  Epoch e visits this host's share of the training set in an order seeded by (config.seed, e) and is cut
  to `steps_per_epoch` whole batches (the remainder is dropped; a different remainder each epoch for
  files). Batches never straddle epochs, so `start_step` resumes by arithmetic: whole epochs are skipped
  by number, the steps inside an epoch by skipping examples before tokenization.
- `eval_batches(split)`: per-host batches of `eval_batch_size // process_count` with a `weight` (1 real,
  0 padding), no shuffling; every example of the split appears once over all hosts and every host yields
  the same number of batches, so a multi-host jitted evaluation never waits for a host that ran out.

Per host. Files: every host reads the files; the training set is permuted afresh each epoch and host i
takes block i of each global batch of the permutation (so hosts see different examples each epoch, and the
global batches do not depend on the process count); evaluation
splits are sliced the same way without permuting. TFDS: `tfds.even_splits` gives each host a fixed,
disjoint slice; each epoch shuffles it with a `shuffle_buffer`-long buffer (files ignore `shuffle_buffer`:
they are permuted whole). A TFDS dataset not yet on disk is downloaded and prepared first, as `tfds.load`
does; for multi-host runs prepare it beforehand (`tfds build NAME --data_dir=...`).

Files: `.csv` (comma, standard quoting), `.tsv` (tab, no quoting, as GLUE's files), `.jsonl`/`.json` (one
JSON object a line, or one JSON array of objects); CSV and TSV need a header row. Text and label are
stripped. With `label_names` labels are names mapped to their index, else integers in [0, num_classes).
Splits without their own files are carved from train_files by a permutation seeded with config.seed.

Bad rows (an empty text, a label that is unknown, not an integer or out of range, a row without the text
or label field, a JSONL line that is not a JSON object) follow config.on_bad_example: 'error' raises a
ValueError naming the file, the 1-based line and the problem; 'skip' leaves the row out, logs the count
once per config key with the files (process 0), and reports it in `skipped_examples`. Every row is checked
while the files are read, before anything compiles. A header without a configured column is a config error
and always raises.
"""

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline.common import (
    SPLIT_STREAM,
    SPLITS,
    BadExamples,
    check_batch_sizes,
    check_on_bad_example,
    epoch_seed,
    eval_padding,
    host_counts,
    host_epoch_order,
    numpy_batches,
    steps_per_epoch,
)
from input_pipeline.tokenization import WordPieceTokenizer

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclasses.dataclass(frozen=True)
class Examples:
    """A split in memory: texts (object array of str) and integer labels."""

    texts: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> "Examples":
        return Examples(self.texts[indices], self.labels[indices])


# ----------------------------------------------------------------------------------------------------
# Reading files.


def expand_files(key: str, value: str) -> list[str]:
    """Comma-separated paths or globs of config.data.<key> -> sorted existing files."""
    paths = []
    for pattern in [p.strip() for p in value.split(",") if p.strip()]:
        matches = sorted(tf.io.gfile.glob(pattern))
        if not matches:
            raise FileNotFoundError(
                f"config.data.{key}={value!r}: {pattern!r} matches no file. Fix the path or glob "
                "(comma-separated CSV, TSV or JSONL files)."
            )
        paths.extend(matches)
    for path in paths:
        if file_format(path) is None:
            raise ValueError(
                f"config.data.{key}: {path!r} has an unknown extension; use one of {', '.join(FORMATS)}."
            )
    return paths


def file_format(path: str) -> str | None:
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return FORMATS.get(suffix)


def read_rows(path: str, text_field: str, label_field: str) -> Iterator[tuple[str, object, object, str]]:
    """Yields (where, text, label, problem) from a CSV, TSV or JSONL file.

    `where` is "FILE line N" (1-based, as an editor counts; "record N" in a JSON array); `problem` is "" for
    a readable row, else what is wrong with it (a row without the text or label field, a line that is not
    a JSON object). A file whose header lacks a configured column raises: that is a config error.
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        content = f.read().decode("utf-8-sig")
    if file_format(path) == "jsonl":
        yield from _json_rows(path, content, text_field, label_field)
    else:
        yield from _delimited_rows(path, content, file_format(path), text_field, label_field)


def _delimited_rows(path: str, content: str, fmt: str, text_field: str, label_field: str):
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
    reader = csv.DictReader(io.StringIO(content, newline=""), **options)
    columns = reader.fieldnames or []
    for column in (text_field, label_field):
        if column not in columns:
            key = "text_field" if column == text_field else "label_field"
            raise ValueError(
                f"{path}: no column {column!r} (config.data.{key}); the header row has columns {columns}. "
                f"Set config.data.{key} to one of them (a header row is required)."
            )
    for row in reader:
        problem = ""
        missing = [column for column in (text_field, label_field) if row[column] is None]
        if missing:
            problem = f"the row has fewer fields than the header: no {' and no '.join(map(repr, missing))}."
        yield f"{path} line {reader.line_num}", row[text_field], row[label_field], problem


def _json_rows(path: str, content: str, text_field: str, label_field: str):
    if content.lstrip().startswith("["):
        records = ((n, record, "") for n, record in enumerate(json.loads(content), start=1))
        unit = "record"
    else:
        records = (
            (n, *_parse_json_line(line)) for n, line in enumerate(content.splitlines(), 1) if line.strip()
        )
        unit = "line"
    for n, record, problem in records:
        where = f"{path} {unit} {n}"
        if problem:
            yield where, None, None, problem
        elif not isinstance(record, dict):
            yield where, None, None, f"expected a JSON object, got {type(record).__name__}."
        else:
            yield where, record.get(text_field), record.get(label_field), _missing_json_fields(
                record, text_field, label_field
            )


def _missing_json_fields(record: dict, text_field: str, label_field: str) -> str:
    for column, key in ((text_field, "text_field"), (label_field, "label_field")):
        if column not in record:
            return (
                f"no column {column!r} (config.data.{key}); columns present: {sorted(record)}. "
                f"Set config.data.{key} to one of them."
            )
    return ""


def _parse_json_line(line: str) -> tuple[object, str]:
    """(record, "") or (None, what is wrong)."""
    try:
        return json.loads(line), ""
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg}); JSONL needs one object a line."


class LabelParser:
    """Label values from files -> class indices, with errors that say where and how to fix."""

    def __init__(self, label_names: tuple[str, ...], num_classes: int):
        self.label_names = tuple(str(name) for name in label_names)
        self.num_classes = num_classes
        self._index = {name: i for i, name in enumerate(self.label_names)}

    def __call__(self, value: object, where: str) -> int:
        if value is None:
            raise ValueError(f"{where}: the label is empty.")
        text = str(value).strip()
        if self.label_names:
            if text not in self._index:
                raise ValueError(
                    f"{where}: label {text!r} is not in config.data.label_names={self.label_names}. "
                    "Add it to config.data.label_names or fix the data."
                )
            return self._index[text]
        return self._integer(value, text, where)

    def _integer(self, value: object, text: str, where: str) -> int:
        if isinstance(value, bool) or not (isinstance(value, int) or text.lstrip("+-").isdigit()):
            raise ValueError(
                f"{where}: label {text!r} is not an integer. Give integer labels in [0, {self.num_classes}) "
                "or set config.data.label_names to the label names (their order gives the indices)."
            )
        label = int(text)
        if not 0 <= label < self.num_classes:
            raise ValueError(
                f"{where}: label {label} is outside [0, {self.num_classes}) "
                f"(config.model.num_classes={self.num_classes}). Raise config.model.num_classes or fix the data."
            )
        return label


def read_examples(
    key: str, value: str, data: ml_collections.ConfigDict, parse_label: LabelParser, bad: BadExamples
) -> Examples:
    """Reads and validates every file of config.data.<key>; bad rows go to `bad` (raise, or skip and count)."""
    texts, labels = [], []
    for path in expand_files(key, value):
        for where, text, label, problem in read_rows(path, data.text_field, data.label_field):
            if not problem and (text is None or not str(text).strip()):
                problem = f"the text ({data.text_field!r}) is empty."
            if problem:
                bad.report(key, path, f"{where}: {problem}")
                continue
            try:
                label = parse_label(label, where)
            except ValueError as e:
                bad.report(key, path, str(e))
                continue
            texts.append(str(text).strip())
            labels.append(label)
    if not texts:
        skipped = bad.counts().get(key, 0)
        reason = f" ({skipped} bad example(s) were skipped)" if skipped else ""
        raise ValueError(f"config.data.{key}={value!r}: the files hold no examples{reason}.")
    return Examples(np.array(texts, dtype=object), np.array(labels, dtype=np.int32))


def carve_splits(train: Examples, fractions: dict[str, float], seed: int) -> dict[str, Examples]:
    """Cuts the given fractions out of train with a seeded permutation; the rest stays train."""
    permutation = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAM])).permutation(len(train))
    splits, start = {}, 0
    for split, fraction in fractions.items():
        count = max(1, round(fraction * len(train)))
        splits[split] = train.take(np.sort(permutation[start : start + count]))
        start += count
    splits["train"] = train.take(np.sort(permutation[start:]))
    return splits


def read_splits(config: ml_collections.ConfigDict, bad: BadExamples) -> dict[str, Examples]:
    """The train split and the validation/test splits that have files or a fraction > 0."""
    data = config.data
    if not data.train_files:
        raise ValueError("config.data.source='files' needs config.data.train_files (paths or globs).")
    parse_label = LabelParser(tuple(data.label_names), config.model.num_classes)
    splits = {"train": read_examples("train_files", data.train_files, data, parse_label, bad)}
    fractions = {}
    for split in ("validation", "test"):
        if data[f"{split}_files"]:
            splits[split] = read_examples(f"{split}_files", data[f"{split}_files"], data, parse_label, bad)
        elif data[f"{split}_fraction"] > 0:
            fractions[split] = data[f"{split}_fraction"]
    splits.update(carve_splits(splits.pop("train"), fractions, config.seed))
    if not splits["train"]:
        raise ValueError(
            f"config.data.train_files={data.train_files!r}: no training example is left after carving "
            f"out {fractions}. Add data or lower config.data.validation_fraction/test_fraction."
        )
    return splits


# ----------------------------------------------------------------------------------------------------
# Sources: this host's (text, label) examples as tf.data, with global and per-host counts.


class FileSource:
    """Examples read from the user's CSV/TSV/JSONL files, held in memory."""

    def __init__(self, config: ml_collections.ConfigDict, process_index: int, process_count: int):
        self.bad_examples = BadExamples(config.on_bad_example)
        splits = read_splits(config, self.bad_examples)
        if process_index == 0:
            self.bad_examples.log_summary()
        self.skipped_examples = self.bad_examples.counts()
        self._splits = splits
        self._seed = config.seed
        self._process_index, self._process_count = process_index, process_count
        self._host_batch_size = config.global_batch_size // process_count
        train = splits["train"]
        self._train_texts = tf.constant(train.texts, dtype=tf.string)
        self._train_labels = tf.constant(train.labels)

    def has_split(self, split: str) -> bool:
        return split in self._splits

    def host_counts(self, split: str) -> list[int]:
        return host_counts(len(self._splits[split]), self._process_count)

    def train_epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        indices = tf.numpy_function(self._host_permutation, [epoch], tf.int64, stateful=False)
        indices = tf.ensure_shape(indices, [None])
        texts, labels = tf.gather(self._train_texts, indices), tf.gather(self._train_labels, indices)
        return tf.data.Dataset.from_tensor_slices((texts, labels))

    def _host_permutation(self, epoch: np.int64) -> np.ndarray:
        return host_epoch_order(self._seed, int(epoch), len(self._splits["train"]), self._process_index,
                                self._process_count, self._host_batch_size)

    def host_examples(self, split: str) -> tf.data.Dataset:
        host = self._splits[split].take(
            np.arange(self._process_index, len(self._splits[split]), self._process_count)
        )
        return tf.data.Dataset.from_tensor_slices((tf.constant(host.texts, dtype=tf.string), host.labels))


class TfdsSource:
    """A TFDS dataset: fixed per-host slices from `tfds.even_splits`, split sizes from its metadata."""

    def __init__(self, config: ml_collections.ConfigDict, process_index: int, process_count: int):
        data = config.data
        self.skipped_examples: dict[str, int] = {}  # TFDS rows are not checked one by one.
        self._builder = _tfds_builder(data.tfds_name, data.tfds_data_dir)
        _check_tfds_features(self._builder, data, config.model.num_classes)
        self._text_field, self._label_field = data.text_field, data.label_field
        self._num_classes = config.model.num_classes
        self._seed, self._shuffle_buffer = config.seed, data.shuffle_buffer
        self._process_index = process_index
        self._host_splits, self._counts = {}, {}
        for split in SPLITS:
            if data[f"{split}_split"]:
                key = f"config.data.{split}_split={data[f'{split}_split']!r}"
                self._host_splits[split] = tfds.even_splits(data[f"{split}_split"], n=process_count)
                self._counts[split] = [self._count(s, key) for s in self._host_splits[split]]
        # Build each split's dataset once, here: under tfds.testing.mock_data, as_dataset patches the file
        # system of the whole process while it runs, which would corrupt concurrent checkpoint writes.
        self._datasets = {
            split: self._builder.as_dataset(split=host_splits[process_index], shuffle_files=False)
            for split, host_splits in self._host_splits.items()
        }

    def has_split(self, split: str) -> bool:
        return split in self._host_splits

    def host_counts(self, split: str) -> list[int]:
        return self._counts[split]

    def train_epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        seed = tf.ensure_shape(tf.numpy_function(self._shuffle_seed, [epoch], tf.int64, stateful=False), [])
        ds = self.host_examples("train")
        if self._shuffle_buffer > 1:
            ds = ds.shuffle(self._shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        return ds

    def _shuffle_seed(self, epoch: np.int64) -> np.int64:
        return np.int64(epoch_seed(self._seed, int(epoch)).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def host_examples(self, split: str) -> tf.data.Dataset:
        ds = self._datasets[split]
        message = (
            f"A label of {self._builder.name} split {split!r} is outside [0, {self._num_classes}) "
            "(config.model.num_classes); hidden test labels are -1 (GLUE): evaluate on another split."
        )
        return ds.map(
            lambda ex: (
                ex[self._text_field],
                _checked_label(ex[self._label_field], self._num_classes, message),
            )
        )

    def _count(self, host_split: object, key: str) -> int:
        if not self._builder.info.splits:  # No metadata (tfds.testing.mock_data): count by reading.
            ds = self._builder.as_dataset(split=host_split, shuffle_files=False)
            return int(ds.reduce(np.int64(0), lambda count, _: count + 1))
        try:
            return self._builder.info.splits[host_split].num_examples
        except (KeyError, ValueError) as e:
            available = list(self._builder.info.splits)
            raise ValueError(
                f"{key} is not a split of {self._builder.name} (splits: {available}): {e}"
            ) from e


def _tfds_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"config.data.tfds_name={name!r} is not a TFDS dataset ({str(e).splitlines()[0]}). Use a name "
            "from `tfds.list_builders()` such as 'imdb_reviews', or config.data.source='files'."
        ) from e
    builder.download_and_prepare()
    return builder


def _check_tfds_features(
    builder: tfds.core.DatasetBuilder, data: ml_collections.ConfigDict, num_classes: int
):
    features = builder.info.features
    for column, key in ((data.text_field, "text_field"), (data.label_field, "label_field")):
        if column not in features:
            raise ValueError(
                f"config.data.{key}={column!r} is not a feature of {builder.name}; features: {list(features)}."
            )
    if features[data.text_field].tf_dtype != tf.string:
        raise ValueError(
            f"config.data.text_field={data.text_field!r} of {builder.name} is not a text feature."
        )
    classes = getattr(features[data.label_field], "num_classes", None)
    if classes is not None and classes > num_classes:
        raise ValueError(
            f"{builder.name} has {classes} classes but config.model.num_classes={num_classes}; "
            f"set config.model.num_classes={classes}."
        )


def _checked_label(label: tf.Tensor, num_classes: int, message: str) -> tf.Tensor:
    label = tf.cast(label, tf.int32)
    checks = [
        tf.debugging.assert_non_negative(label, message=message),
        tf.debugging.assert_less(label, num_classes, message=message),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(label)


# ----------------------------------------------------------------------------------------------------
# The pipeline.


def resolve_vocab_path(config: ml_collections.ConfigDict) -> str:
    """config.data.vocab_path, else config.init_from/vocab.txt."""
    path = config.data.vocab_path
    if path:
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"config.data.vocab_path={path!r} does not exist. Set it to a WordPiece vocab.txt (one token a line)."
            )
        return path
    init_from = config.get("init_from", "")
    if init_from and tf.io.gfile.exists(f"{init_from.rstrip('/')}/vocab.txt"):
        return f"{init_from.rstrip('/')}/vocab.txt"
    raise ValueError(
        f"No vocabulary: config.data.vocab_path is '' and config.init_from={init_from!r} holds no vocab.txt. "
        "Set config.data.vocab_path to a WordPiece vocab.txt or config.init_from to a Hugging Face BERT directory."
    )


def check_config(config: ml_collections.ConfigDict, process_count: int) -> None:
    """Checks of the config alone, before any data is read."""
    check_batch_sizes(config, process_count)
    check_on_bad_example(config.on_bad_example)
    data = config.data
    if data.source not in ("tfds", "files"):
        raise ValueError(f"config.data.source={data.source!r}: use 'tfds' or 'files'.")
    fractions = {key: data[key] for key in ("validation_fraction", "test_fraction")}
    if any(not 0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise ValueError(
            f"config.data fractions {fractions} must each be in [0, 1) and sum to less than 1: the rest is train."
        )
    if len(data.label_names) > config.model.num_classes:
        raise ValueError(
            f"config.data.label_names has {len(data.label_names)} names but config.model.num_classes="
            f"{config.model.num_classes}; set config.model.num_classes={len(data.label_names)}."
        )


class TextClassificationData:
    """Tokenized text classification batches for this host; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
        check_config(config, process_count)
        data = config.data
        self.tokenizer = WordPieceTokenizer(resolve_vocab_path(config), data.max_length, data.lowercase)
        self.vocab_size: int = self.tokenizer.vocab_size
        source_class = FileSource if data.source == "files" else TfdsSource
        self._source = source_class(config, process_index, process_count)
        # Examples left out under config.on_bad_example='skip', by the config key they were read under.
        self.skipped_examples: dict[str, int] = self._source.skipped_examples
        self._process_index = process_index
        self.train_batch_size: int = config.global_batch_size // process_count
        self.eval_batch_size: int = config.eval_batch_size // process_count
        self.num_train_examples: int = self.num_examples("train")
        self.steps_per_epoch: int = steps_per_epoch(
            self._source.host_counts("train"), self.train_batch_size, config.global_batch_size
        )
        self._check_eval_splits()

    def _check_eval_splits(self) -> None:
        for split in SPLITS[1:]:
            if self._source.has_split(split) and self.num_examples(split) == 0:
                raise ValueError(f"The {split} split is empty: check config.data.{split}_split or its files.")

    def num_examples(self, split: str) -> int:
        """Examples of the split over all hosts; 0 for a split the config does not define."""
        self._check_split_name(split)
        return sum(self._source.host_counts(split)) if self._source.has_split(split) else 0

    def train_iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Infinite per-host training batches; `start_step=k` yields what `start_step=0` yields from batch k."""
        epoch, step = divmod(start_step, self.steps_per_epoch)
        per_epoch = self.steps_per_epoch * self.train_batch_size
        ds = tf.data.Dataset.counter(epoch).flat_map(lambda e: self._source.train_epoch(e).take(per_epoch))
        ds = ds.skip(step * self.train_batch_size).batch(self.train_batch_size, drop_remainder=True)
        return self._numpy_batches(ds, self._encode)

    def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Per-host batches of the split once, padded with weight-0 examples; the same count on every host."""
        self._check_split_name(split)
        if not self._source.has_split(split):
            raise ValueError(
                f"The config defines no {split} split: set config.data.{split}_split (TFDS), or "
                f"config.data.{split}_files or config.data.{split}_fraction > 0 (files)."
            )
        counts = self._source.host_counts(split)
        batch_size = self.eval_batch_size
        num_padding = eval_padding(counts, self._process_index, batch_size)
        real = self._source.host_examples(split).map(lambda text, label: (text, label, 1.0))
        padding = tf.data.Dataset.from_tensors((tf.constant(""), tf.constant(0), tf.constant(0.0)))
        ds = real.concatenate(padding.repeat(num_padding)).batch(batch_size, drop_remainder=True)
        return self._numpy_batches(ds, self._encode_weighted)

    def _encode(self, texts: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {**self.tokenizer(texts), "label": labels}

    def _encode_weighted(
        self, texts: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        return {**self._encode(texts, labels), "weight": weights}

    @staticmethod
    def _numpy_batches(ds: tf.data.Dataset, encode: Callable[..., dict]) -> Iterator[dict[str, np.ndarray]]:
        return numpy_batches(ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE))

    @staticmethod
    def _check_split_name(split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
