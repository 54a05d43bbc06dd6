"""`--mode=inspect_data`: a look at the data before training, as a short console table and WORKDIR/data_report.json.

For each split the config defines (train, validation, test), read whole through the pipeline that training
would use (same files, TFDS splits, seeded carving and bad-example checks):
- examples per split and per class;
- text: length in word pieces (the model's tokenizer, without [CLS] and [SEP]) at the 50th, 90th, 95th and 99th
  percentiles and the maximum, and exactly how many examples `data.max_length` truncates (more than
  max_length - 2 pieces) and which fraction that is;
- images: the decoded sizes (height x width: the most common ones, the smallest and the largest);
- exact duplicates: within each split (copies beyond the first), and across splits: examples of validation or
  test whose exact text (or decoded pixels) is also in train, and test examples also in validation (leakage);
- bad examples by kind (an empty text, an unknown label, an image that does not decode...): the data is read
  with `on_bad_example='skip'` so that every bad example is counted instead of stopping at the first.

It reads the pipeline's data object through `_Splits`: `examples.has_split(split)` and
`examples.host_examples(split)` (the parsed examples), `tokenizer.word_pieces(texts)` for text,
`decode_image(value)`, `class_names` for images, and `bad_example_messages` for the bad examples. With one
process every "host" split is the whole split.
"""

import collections
import dataclasses
import hashlib
import json
import logging

import ml_collections
import numpy as np
import tensorflow as tf
from etils import epath

import input_pipeline
from lm import config_checks, models, tasks

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
PERCENTILES = (50, 90, 95, 99)
# Bad-example messages (input_pipeline) -> their kind: the first phrase found names it.
BAD_KINDS = (
    ("does not decode", "image does not decode"),
    ("is empty", "empty text or label"),
    ("is not in config.data.label_names", "label not in label_names"),
    ("is not an integer", "label not an integer"),
    ("is outside", "label out of range"),
    ("fewer fields than the header", "row with missing fields"),
    ("no column", "record without the text or label field"),
    ("not valid JSON", "line that is not JSON"),
    ("expected a JSON object", "JSON value that is not an object"),
)
BATCH = 256


@dataclasses.dataclass
class SplitData:
    """What inspection reads of one split: labels, a fingerprint per example, and its size."""

    labels: list[int] = dataclasses.field(default_factory=list)
    keys: list[bytes] = dataclasses.field(default_factory=list)  # equal keys = exact duplicates
    lengths: list[int] = dataclasses.field(default_factory=list)  # text: word pieces per example
    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # images: (height, width)
    samples: dict[bytes, str] = dataclasses.field(default_factory=dict)  # key -> a readable excerpt (text)


class _Splits:
    """The adapter over today's pipeline data objects (see the module docstring): reads each split whole."""

    def __init__(self, config: ml_collections.ConfigDict):
        family = models.model_family(config.model)
        pipeline = tasks.task_spec(config.task).pipeline(family)
        self.data = input_pipeline.create_data(config, 0, 1, pipeline=pipeline)
        self.text = family.modality == "text"
        self.max_length = config.data.max_length if self.text else 0
        self.class_names = self._class_names(config)

    def _class_names(self, config: ml_collections.ConfigDict) -> list[str]:
        if not self.text:
            return list(self.data.class_names)
        names = [str(name) for name in config.data.label_names]
        return names + [str(i) for i in range(len(names), config.model.num_classes)]

    def splits(self) -> list[str]:
        return [split for split in SPLITS if self.data.examples.has_split(split)]

    def read(self, split: str) -> SplitData:
        return self._read_text(split) if self.text else self._read_images(split)

    def _read_text(self, split: str) -> SplitData:
        out = SplitData()
        examples = self.data.examples.host_examples(split).map(lambda e: (e["text"], e["label"]))
        for texts, labels in examples.batch(BATCH).as_numpy_iterator():
            out.lengths.extend(self.data.tokenizer.word_pieces(texts).row_lengths().numpy().tolist())
            out.labels.extend(labels.tolist())
            for text in texts:
                key = hashlib.sha256(text).digest()
                out.keys.append(key)
                out.samples.setdefault(key, text.decode("utf-8", "replace")[:80])
        return out

    def _read_images(self, split: str) -> SplitData:
        def describe(example):
            image = self.data.decode_image(example["image"])
            return example["label"], tf.shape(image)[:2], tf.fingerprint(tf.reshape(image, [1, -1]))[0]

        out = SplitData()
        ds = self.data.examples.host_examples(split).map(describe, num_parallel_calls=tf.data.AUTOTUNE)
        for labels, shapes, fingerprints in ds.batch(BATCH).as_numpy_iterator():
            out.labels.extend(labels.tolist())
            out.sizes.extend((int(h), int(w)) for h, w in shapes)
            out.keys.extend(shape.tobytes() + fingerprint.tobytes() for shape, fingerprint in zip(shapes, fingerprints))
        return out

    def bad_examples(self) -> dict[str, dict[str, int]]:
        """{config key: {kind: count}} of the examples left out as bad."""
        return {key: dict(collections.Counter(_bad_kind(message) for message in messages))
                for key, messages in self.data.bad_example_messages.items()}


def _bad_kind(message: str) -> str:
    return next((kind for phrase, kind in BAD_KINDS if phrase in message), "other")


def _length_stats(lengths: list[int], max_length: int) -> dict:
    values = np.asarray(lengths)
    truncated = int((values > max_length - 2).sum())
    return {
        "word_pieces": {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES} | {"max": int(values.max())},
        "max_length": max_length,
        "truncated": truncated,
        "truncated_fraction": truncated / len(values),
    }


def _size_stats(sizes: list[tuple[int, int]]) -> dict:
    counts = collections.Counter(sizes)
    areas = sorted(counts, key=lambda hw: (hw[0] * hw[1], hw))
    return {
        "distinct": len(counts),
        "most_common": [{"height": h, "width": w, "count": n} for (h, w), n in counts.most_common(5)],
        "smallest": list(areas[0]),
        "largest": list(areas[-1]),
    }


def _duplicates_within(split: SplitData) -> dict:
    counts = collections.Counter(split.keys)
    repeated = {key: n for key, n in counts.items() if n > 1}
    examples = [split.samples[key] for key in list(repeated)[:3] if key in split.samples]
    return {"extra_copies": sum(n - 1 for n in repeated.values()), "distinct_repeated": len(repeated),
            "examples": examples}


def _duplicates_across(first: SplitData, second: SplitData) -> dict:
    """Examples of `second` whose exact content is also in `first`."""
    seen = set(first.keys)
    shared = [key for key in second.keys if key in seen]
    examples = [second.samples[key] for key in dict.fromkeys(shared) if key in second.samples][:3]
    return {"examples_in_both": len(shared), "distinct": len(set(shared)), "examples": examples}


def inspect(config: ml_collections.ConfigDict) -> dict:
    """The report as a dict (see the module docstring); reads every split once."""
    config = config_checks.resolved_copy(config)
    config.on_bad_example = "skip"  # Count every bad example instead of stopping at the first.
    config.global_batch_size = config.eval_batch_size = 1  # Batching plays no part; a tiny set is no error.
    splits = _Splits(config)
    names = splits.class_names
    read = {split: splits.read(split) for split in splits.splits()}
    report = {"splits": {}, "duplicates_across": {}, "bad_examples": splits.bad_examples()}
    for split, data in read.items():
        per_class = collections.Counter(data.labels)
        entry = {
            "examples": len(data.labels),
            "per_class": {names[label] if label < len(names) else str(label): per_class[label]
                          for label in sorted(per_class)},
            "duplicates": _duplicates_within(data),
        }
        if data.lengths:
            entry["length"] = _length_stats(data.lengths, splits.max_length)
        if data.sizes:
            entry["image_sizes"] = _size_stats(data.sizes)
        report["splits"][split] = entry
    for first, second in (("train", "validation"), ("train", "test"), ("validation", "test")):
        if first in read and second in read:
            report["duplicates_across"][f"{first}/{second}"] = _duplicates_across(read[first], read[second])
    return report


def table(report: dict) -> str:
    """A few lines for the console: one row per split, then leakage and bad examples."""
    text = any("length" in entry for entry in report["splits"].values())
    header = "word pieces p50/p95/max, truncated" if text else "image sizes (most common; distinct)"
    lines = [f"{'split':<11} {'examples':>9} {'classes':>8} {'dup. copies':>11}  {header}"]
    for split, entry in report["splits"].items():
        if text:
            length = entry["length"]
            pieces = length["word_pieces"]
            detail = (f"{pieces['p50']:.0f}/{pieces['p95']:.0f}/{pieces['max']}, {length['truncated']} "
                      f"({100 * length['truncated_fraction']:.2f}%) over max_length {length['max_length']}")
        else:
            sizes = entry["image_sizes"]
            top = sizes["most_common"][0]
            detail = f"{top['height']}x{top['width']} ({top['count']}); {sizes['distinct']} distinct"
        lines.append(f"{split:<11} {entry['examples']:>9} {len(entry['per_class']):>8} "
                     f"{entry['duplicates']['extra_copies']:>11}  {detail}")
    for pair, found in report["duplicates_across"].items():
        lines.append(f"leakage {pair}: {found['examples_in_both']} example(s) of {pair.split('/')[1]} also in "
                     f"{pair.split('/')[0]}" + (f", e.g. {found['examples'][0]!r}" if found["examples"] else ""))
    for key, kinds in report["bad_examples"].items():
        lines.append(f"bad examples in config.data.{key}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items()))
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Prints the table and writes WORKDIR/data_report.json; returns the report."""
    report = inspect(config)
    print(table(report), flush=True)
    path = epath.Path(workdir) / "data_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    log.info("Wrote %s", path)
    return report
