"""The Source protocol: what a data source receives (`Request`) and returns (`InMemory` or `Streamed`).

A source reads examples; it does not split, shard, shuffle, batch or pad them: the shared core
(`input_pipeline.core`) does that, once, for every source. An example is a dict of the fields the pipeline
asks for (`request.fields`): ("text", "label") for text classification, ("text",) for a pretraining corpus,
("image", "label") for images.

- `InMemory`: the splits the data gives itself as columns (numpy arrays of equal length, "train" at
  least); the core carves the missing splits out of train (`common.carve_splits`), slices them per host
  and permutes the training split afresh each epoch.
- `Streamed` (too large for memory, e.g. TFDS): this host's tf.data dataset of each split (every host's with
  `request.every_host`) and every host's example count; the core shuffles the training split each epoch in a
  `config.data.shuffle_buffer`-long buffer.

Records read from the user's files go through `request.keep`, which applies the pipeline's check of one
example and the bad-example policy (`config.on_bad_example`): raise naming the file and line, or skip and count.
"""

import dataclasses
from collections.abc import Callable

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline.common import BadExample, BadExamples

Columns = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Request:
    """What a pipeline asks of a source."""

    config: ml_collections.ConfigDict
    process_index: int
    process_count: int
    fields: tuple[str, ...]  # the example fields the pipeline reads, e.g. ("text", "label")
    splits: tuple[str, ...]  # the splits the pipeline knows, "train" first
    bad: BadExamples
    # The pipeline's check of one record: the example (fields -> values), None for a record that is no example
    # (a blank line of a corpus), or BadExample with what is wrong.
    parse: Callable[[dict], dict | None]
    every_host: bool = False  # Streamed: build every host's dataset, not only this host's.

    def keep(self, key: str, path: str, where: str, record: dict | None, problem: str = "") -> dict | None:
        """One record read under config.data.<key> at `where` ("FILE line N"): its example, or None.

        A record with a `problem` (found while reading) or that the pipeline's check rejects is reported to
        the bad-example policy: it raises there ('error') or is counted and left out ('skip').
        """
        if not problem:
            try:
                return self.parse(record)
            except BadExample as e:
                problem = str(e)
        self.bad.report(key, path, f"{where}: {problem}")
        return None


@dataclasses.dataclass
class Loaded:
    """What every source says about its data besides the examples."""

    description: str  # names the data in messages, e.g. "config.data.train_dir='/data/pets'"
    class_names: list[str] | None = None  # None: the source does not know them (labels are checked by range)
    # Field-specific facts for the pipeline, e.g. images: "image_format" ("pixels", "path", "encoded") and
    # "image_defaults" (image_classification.Defaults: channels and normalisation of the dataset).
    info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class InMemory(Loaded):
    splits: dict[str, Columns] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Streamed(Loaded):
    datasets: dict[str, dict[int, tf.data.Dataset]] = dataclasses.field(default_factory=dict)  # split -> host ->
    counts: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # split -> examples on each host


def columns(examples: list[dict], fields: tuple[str, ...]) -> Columns:
    """Examples (dicts) -> columns; strings become object arrays."""
    out = {}
    for field in fields:
        values = [example[field] for example in examples]
        out[field] = np.array(values, dtype=object if values and isinstance(values[0], str) else None)
    return out


def take(split: Columns, indices: np.ndarray) -> Columns:
    return {field: values[indices] for field, values in split.items()}


def size(split: Columns) -> int:
    return len(next(iter(split.values())))
