"""Text classification input: examples ("text", "label") from any registered source -> tokenized host batches.

`TextClassificationData(config, process_index, process_count)` (pipeline "text_classification") checks the
text keys of `config.data` (configs/bert_sentiment.py), loads the WordPiece vocabulary and reads the source
(TFDS, the user's CSV/TSV/JSONL files, or one a user registers) through the shared core
(`input_pipeline.core`: splits, per-host slices, epoch order, resume, padded evaluation, bad examples), then
serves `train_iterator(start_step)` and `eval_batches(split)` with "input_ids", "attention_mask",
"token_type_ids" (int32 [b, length]), "label" (int32 [b]) and, for evaluation, "weight" (1 real, 0 padding).
The length is `config.data.max_length`, or with `config.data.bucket_lengths` (on by default) the smallest bucket
that holds the longest example of the global batch (`input_pipeline.bucketing`).

Records read from files are stripped; an empty text is a bad example. With `config.data.label_names` labels
are names mapped to their index, else integers in [0, num_classes); a label outside that range is a bad
example too (`config.on_bad_example`: raise naming the file and line, or skip and count). Labels of a
streamed source are checked in the graph (GLUE's hidden test labels are -1).
"""

import logging

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline import bucketing
from input_pipeline.common import BadExample
from input_pipeline.core import Pipeline
from input_pipeline.registry import register_pipeline
from input_pipeline.source import InMemory, Streamed
from input_pipeline.tokenization import tokenizer_from_config

log = logging.getLogger(__name__)

class LabelParser:
    """Label values from files -> class indices; BadExample says what is wrong and how to fix it."""

    def __init__(self, label_names: tuple[str, ...], num_classes: int):
        self.label_names = tuple(str(name) for name in label_names)
        self.num_classes = num_classes
        self._index = {name: i for i, name in enumerate(self.label_names)}

    def __call__(self, value: object) -> int:
        if value is None:
            raise BadExample("the label is empty.")
        text = str(value).strip()
        if self.label_names:
            if text not in self._index:
                raise BadExample(
                    f"label {text!r} is not in config.data.label_names={self.label_names}. "
                    "Add it to config.data.label_names or fix the data."
                )
            return self._index[text]
        if isinstance(value, bool) or not (isinstance(value, int) or text.lstrip("+-").isdigit()):
            raise BadExample(
                f"label {text!r} is not an integer. Give integer labels in [0, {self.num_classes}) "
                "or set config.data.label_names to the label names (their order gives the indices)."
            )
        label = int(text)
        if not 0 <= label < self.num_classes:
            raise BadExample(
                f"label {label} is outside [0, {self.num_classes}) "
                f"(config.model.num_classes={self.num_classes}). Raise config.model.num_classes or fix the data."
            )
        return label


class TextClassificationData(Pipeline):
    """Tokenized text classification batches for this host; see the module docstring."""

    FIELDS = ("text", "label")

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        names, classes = len(config.data.label_names), config.model.num_classes
        if names > classes:
            raise ValueError(
                f"config.data.label_names has {names} names but config.model.num_classes={classes}; set "
                f"config.model.num_classes={names}."
            )

    def prepare(self, config: ml_collections.ConfigDict) -> None:
        self._text_field, self._num_classes = config.data.text_field, config.model.num_classes
        self._parse_label = LabelParser(tuple(config.data.label_names), config.model.num_classes)
        self.tokenizer = tokenizer_from_config(config)
        self.vocab_size: int = self.tokenizer.vocab_size
        # The padded lengths a batch may take (the last is max_length); one length = bucketing off.
        self.bucket_lengths: tuple[int, ...] = bucketing.bucket_lengths(config)
        self._global_lengths: bucketing.GlobalLengths | None = None
        self._token_counts: dict[str, np.ndarray] = {}
        self._bucket_config = (config.seed, config.global_batch_size, config.eval_batch_size)

    def parse(self, record: dict) -> dict:
        text = record["text"]
        if text is None or not str(text).strip():
            raise BadExample(f"the text ({self._text_field!r}) is empty.")
        return {"text": str(text).strip(), "label": self._parse_label(record["label"])}

    def loaded(self, config: ml_collections.ConfigDict, loaded: InMemory | Streamed) -> None:
        classes = loaded.class_names
        if classes is not None and len(classes) > self._num_classes:
            raise ValueError(
                f"{loaded.description} has {len(classes)} classes but config.model.num_classes={self._num_classes}; "
                f"set config.model.num_classes={len(classes)}."
            )
        self._description = loaded.description
        if len(self.bucket_lengths) > 1 and self._process_count > 1:
            if isinstance(loaded, InMemory):
                seed, global_batch, eval_batch = self._bucket_config
                self._global_lengths = bucketing.GlobalLengths(
                    self.bucket_lengths, seed, global_batch, self._process_count, eval_batch, self._token_lengths)
            else:
                log.warning("config.data.bucket_lengths: %s is streamed and %d hosts cannot see each other's "
                            "examples: batches keep config.data.max_length.", self._description, self._process_count)
                self.bucket_lengths = self.bucket_lengths[-1:]

    def _token_lengths(self, split: str) -> np.ndarray:
        """Token counts of every example of an in-memory split, over all hosts (counted once per split)."""
        if split not in self._token_counts:
            texts = self.examples.all_examples(split).map(lambda example: example["text"])
            self._token_counts[split] = bucketing.token_lengths(texts, self.tokenizer)
        return self._token_counts[split]

    def _label(self, label: tf.Tensor, split: str) -> tf.Tensor:
        """The label as int32, checked in the graph: a streamed label is not checked when read."""
        message = (
            f"A label of {self._description} split {split!r} is outside [0, {self._num_classes}) "
            "(config.model.num_classes); hidden test labels are -1 (GLUE): evaluate on another split."
        )
        label = tf.cast(label, tf.int32)
        checks = [tf.debugging.assert_non_negative(label, message=message),
                  tf.debugging.assert_less(label, self._num_classes, message=message)]
        with tf.control_dependencies(checks):
            return tf.identity(label)

    def train_examples(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        kept = ("index", "epoch") if self._global_lengths is not None else ()  # Where the batch is in the epoch.
        return ds.map(lambda example: {"text": example["text"], "label": self._label(example["label"], "train"),
                                       **{key: example[key] for key in kept}})

    def train_batches(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        ds = ds.map(self._encode, num_parallel_calls=tf.data.AUTOTUNE)
        if self._global_lengths is not None:
            def global_cut(batch):
                epoch, index = batch.pop("epoch"), batch.pop("index")
                length = tf.numpy_function(self._global_lengths.train_length, [epoch[0], index[0]], tf.int32,
                                           stateful=False)
                return bucketing.cut(batch, length)

            return ds.map(global_cut)
        return self._own_cut(ds)

    def _own_cut(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        if len(self.bucket_lengths) == 1:
            return ds
        return ds.map(lambda batch: bucketing.cut_to_own_longest(batch, self.bucket_lengths),
                      num_parallel_calls=tf.data.AUTOTUNE)

    def eval_examples(self, split: str) -> tf.data.Dataset:
        return self.examples.host_examples(split).map(
            lambda example: {"text": example["text"], "label": self._label(example["label"], split),
                             "weight": tf.constant(1.0)}
        )

    def eval_padding(self) -> dict[str, tf.Tensor]:
        return {"text": tf.constant(""), "label": tf.constant(0), "weight": tf.constant(0.0)}

    def eval_batches_map(self, ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
        ds = ds.map(self._encode, num_parallel_calls=tf.data.AUTOTUNE)
        if self._global_lengths is not None:
            lengths = tf.constant(self._global_lengths.eval_lengths(split))
            return ds.enumerate().map(lambda i, batch: bucketing.cut(batch, lengths[i]))
        return self._own_cut(ds)

    def _encode(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {**self.tokenizer(batch.pop("text")), **batch}


register_pipeline("text_classification", TextClassificationData)
