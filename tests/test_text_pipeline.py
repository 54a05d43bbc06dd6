"""Text classification pipeline: user files (CSV/TSV/JSONL), per-host slices, exact-once eval, resume, errors, TFDS."""

import csv
import itertools
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import bert_sentiment
from input_pipeline.text_classification import TextClassificationData
from input_pipeline.tokenization import WordPieceTokenizer

NAMES = ("negative", "positive")
BATCH_KEYS = {"input_ids", "attention_mask", "token_type_ids", "label"}


def make_config(vocab, **data):
    config = bert_sentiment.get_config("files,smoke")
    config.data.vocab_path = str(vocab)
    config.data.max_length = 16
    config.global_batch_size = 4
    config.eval_batch_size = 4
    config.data.update(data)
    return config


def make_rows(count, start=0, names=True):
    return [
        {
            "text": f" review {i} is {'great' if i % 3 else 'awful'} ",
            "label": NAMES[i % 2] if names else i % 2,
        }
        for i in range(start, start + count)
    ]


def write(path, rows, columns=("text", "label")):
    """Writes rows as CSV, TSV or JSONL by the path's extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({c: r[c] for c in columns}) + "\n" for r in rows))
    elif path.suffix == ".tsv":
        lines = ["\t".join(columns)] + ["\t".join(str(r[c]) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return str(path)


class LmTinyReviews(tfds.core.GeneratorBasedBuilder):
    """A real (not mocked) TFDS dataset with split metadata, written by the test: 30 train, 11 test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=NAMES)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 30), "test": self._generate_examples(100, 111)}

    def _generate_examples(self, start, stop):
        for row in make_rows(stop - start, start=start, names=False):
            yield row["text"], row


@pytest.fixture(scope="module")
def ids_of(minilm_vocab):
    """rows -> {token ids of a row: its index}: identifies examples inside batches."""
    tokenizer = WordPieceTokenizer(str(minilm_vocab), max_length=16)

    def example_ids(rows):
        ids = tokenizer.encode([r["text"] for r in rows])["input_ids"]
        return {tuple(row): i for i, row in enumerate(ids)}

    return example_ids


def eval_examples(data, split, ids):
    """(index, label) of the real (weight 1) examples of a split in batch order, and the batch count."""
    batches = list(data.eval_batches(split))
    found = [
        (ids[tuple(row)], int(label))
        for b in batches
        for row, label, weight in zip(b["input_ids"], b["label"], b["weight"])
        if weight == 1
    ]
    return found, len(batches)


def eval_indices(data, split, ids):
    found, num_batches = eval_examples(data, split, ids)
    return [i for i, _ in found], num_batches


def train_indices(batches, ids):
    return [ids[tuple(row)] for b in batches for row in b["input_ids"]]


@pytest.mark.parametrize(
    ("suffix", "names"), [(".csv", True), (".tsv", False), (".jsonl", True), (".jsonl", False)]
)
def test_files_are_split_disjointly_and_deterministically(tmp_path, minilm_vocab, ids_of, suffix, names):
    rows = make_rows(50, names=names)
    config = make_config(
        minilm_vocab, train_files=write(tmp_path / f"train{suffix}", rows), label_names=NAMES if names else ()
    )
    data = TextClassificationData(config)
    assert {s: data.num_examples(s) for s in ("train", "validation", "test")} == {
        "train": 40,
        "validation": 5,
        "test": 5,
    }
    assert data.num_train_examples == 40 and data.steps_per_epoch == 10 and data.vocab_size == 30522
    ids = ids_of(rows)
    found = {split: eval_examples(data, split, ids)[0] for split in ("train", "validation", "test")}
    indices = {split: [i for i, _ in examples] for split, examples in found.items()}
    assert sorted(itertools.chain(*indices.values())) == list(range(50))
    assert all(indices[split] == sorted(indices[split]) for split in indices), "evaluation keeps file order"
    assert eval_indices(TextClassificationData(config), "test", ids)[0] == indices["test"]
    expected = [(i, i % 2) for i in indices["validation"]]
    assert found["validation"] == expected, "labels follow label_names or the integers"


def test_batches_have_the_right_shapes(tmp_path, minilm_vocab):
    config = make_config(
        minilm_vocab, train_files=write(tmp_path / "t.csv", make_rows(20)), label_names=NAMES
    )
    data = TextClassificationData(config)
    batch = next(data.train_iterator())
    assert set(batch) == BATCH_KEYS
    for key in BATCH_KEYS - {"label"}:
        assert batch[key].shape == (4, 16) and batch[key].dtype == np.int32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert (batch["input_ids"][:, 0] == data.tokenizer.cls_id).all()
    evaluation = next(data.eval_batches("validation"))
    assert set(evaluation) == BATCH_KEYS | {"weight"} and evaluation["weight"].dtype == np.float32


def test_train_iterator_is_deterministic_and_resumes(tmp_path, minilm_vocab, ids_of):
    rows = make_rows(30)
    config = make_config(
        minilm_vocab, train_files=write(tmp_path / "t.csv", rows), label_names=NAMES, validation_fraction=0.0
    )
    data = TextClassificationData(config)  # 27 examples, 6 steps an epoch: 3 dropped each epoch.
    assert data.steps_per_epoch == 6
    ids = ids_of(rows)
    full = train_indices(itertools.islice(data.train_iterator(), 15), ids)
    assert full == train_indices(itertools.islice(TextClassificationData(config).train_iterator(), 15), ids)
    for start in (4, 6, 13):
        resumed = train_indices(itertools.islice(data.train_iterator(start_step=start), 15 - start), ids)
        assert resumed == full[4 * start :], f"start_step={start}"
    epochs = [full[i * 24 : (i + 1) * 24] for i in range(2)]
    assert all(len(set(e)) == 24 for e in epochs) and epochs[0] != epochs[1]
    config.seed = 1
    assert (
        train_indices(itertools.islice(TextClassificationData(config).train_iterator(), 6), ids) != full[:24]
    )


def test_hosts_take_disjoint_covering_slices(tmp_path, minilm_vocab, ids_of):
    train, validation = make_rows(40), make_rows(23, start=100)
    config = make_config(
        minilm_vocab,
        train_files=write(tmp_path / "train.jsonl", train),
        validation_files=write(tmp_path / "validation.csv", validation),
        test_fraction=0.0,
        label_names=NAMES,
    )
    config.global_batch_size, config.eval_batch_size = 8, 8
    hosts = [TextClassificationData(config, process_index=i, process_count=2) for i in range(2)]
    assert [h.num_examples("validation") for h in hosts] == [23, 23]
    assert [h.steps_per_epoch for h in hosts] == [5, 5]
    train_ids, validation_ids = ids_of(train), ids_of(validation)
    epoch = [train_indices(itertools.islice(h.train_iterator(), 5), train_ids) for h in hosts]
    assert not set(epoch[0]) & set(epoch[1]) and sorted(epoch[0] + epoch[1]) == list(range(40))
    seen = [eval_indices(h, "validation", validation_ids) for h in hosts]
    assert seen[0][1] == seen[1][1] == 3, "every host yields the same number of batches"
    assert sorted(seen[0][0] + seen[1][0]) == list(range(23))
    weights = [sum(b["weight"].sum() for b in h.eval_batches("validation")) for h in hosts]
    assert weights == [12.0, 11.0]
    with pytest.raises(ValueError, match="The config defines no test split: set config.data.test_split"):
        hosts[0].eval_batches("test")


def test_vocab_from_init_from(tmp_path, minilm_vocab):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_bytes(minilm_vocab.read_bytes())
    config = make_config("", train_files=write(tmp_path / "t.csv", make_rows(20)), label_names=NAMES)
    config.init_from = str(tmp_path / "bert")
    assert TextClassificationData(config).vocab_size == 30522


ERROR_CASES = {
    "missing file": (
        {"train_files": "{tmp}/nope.csv"},
        FileNotFoundError,
        r"config.data.train_files='.*nope.csv': '.*nope.csv' matches no file",
    ),
    "missing validation file": (
        {"validation_files": "{tmp}/good.csv,{tmp}/va*.jsonl"},
        FileNotFoundError,
        r"config.data.validation_files=.*va\*.jsonl' matches no file",
    ),
    "unknown extension": ({"train_files": "{tmp}/good.txt"}, ValueError, "unknown extension"),
    "missing csv column": (
        {"text_field": "review"},
        ValueError,
        r"good.csv: no column 'review' \(config.data.text_field\); the header row has columns \['text', 'label'\]",
    ),
    "missing jsonl column": (
        {"train_files": "{tmp}/good.jsonl", "label_field": "stars"},
        ValueError,
        r"good.jsonl line 1: no column 'stars' \(config.data.label_field\); columns present: \['label', 'text'\]",
    ),
    "unknown label name": (
        {"train_files": "{tmp}/neutral.csv"},
        ValueError,
        r"neutral.csv line 4: label 'neutral' is not in config.data.label_names=\('negative', 'positive'\)",
    ),
    "label not an integer": (
        {"label_names": ()},
        ValueError,
        r"good.csv line 2: label 'negative' is not an integer",
    ),
    "label out of range": (
        {"train_files": "{tmp}/ints.jsonl", "label_names": ()},
        ValueError,
        r"ints.jsonl line 3: label 2 is outside \[0, 2\) \(config.model.num_classes=2\)",
    ),
    "empty file": ({"train_files": "{tmp}/empty.csv"}, ValueError, "the files hold no examples"),
    "no vocab": (
        {"vocab_path": ""},
        ValueError,
        r"config.data.vocab_path is '' and config.init_from='' holds no vocab.txt. Set config.data.vocab_path",
    ),
    "missing vocab": (
        {"vocab_path": "{tmp}/vocab.txt"},
        FileNotFoundError,
        "config.data.vocab_path='.*vocab.txt'",
    ),
    "smaller than a batch": ({"train_files": "{tmp}/tiny.csv"}, ValueError, "smaller than one batch"),
    "bad fractions": ({"validation_fraction": 0.6, "test_fraction": 0.5}, ValueError, "sum to less than 1"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_name_the_key_the_value_and_the_fix(tmp_path, minilm_vocab, case):
    write(tmp_path / "good.csv", make_rows(20))
    write(tmp_path / "good.jsonl", make_rows(20))
    write(tmp_path / "neutral.csv", [*make_rows(2), {"text": "meh", "label": "neutral"}])
    write(
        tmp_path / "ints.jsonl",
        [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 2}],
    )
    write(tmp_path / "empty.csv", [])
    write(tmp_path / "tiny.csv", make_rows(3))
    (tmp_path / "good.txt").write_text("text,label\n")
    overrides, error, match = ERROR_CASES[case]
    data = {"train_files": "{tmp}/good.csv", "label_names": NAMES, "test_fraction": 0.0} | overrides
    data = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in data.items()}
    with pytest.raises(error, match=match):
        TextClassificationData(make_config(minilm_vocab, **data))


@pytest.mark.parametrize("key", ["global_batch_size", "eval_batch_size"])
def test_batch_sizes_must_divide_among_hosts(tmp_path, minilm_vocab, key):
    config = make_config(
        minilm_vocab, train_files=write(tmp_path / "t.csv", make_rows(20)), label_names=NAMES
    )
    config[key] = 6
    with pytest.raises(
        ValueError, match=f"config.{key}=6 must be a positive multiple of the process count \\(4\\)"
    ):
        TextClassificationData(config, process_index=0, process_count=4)


@pytest.mark.parametrize(("name", "text_field"), [("imdb_reviews", "text"), ("glue/sst2", "sentence")])
def test_tfds_mock_data_batches(minilm_vocab, name, text_field):
    config = make_config(minilm_vocab, source="tfds", tfds_name=name, text_field=text_field, test_split="")
    with tfds.testing.mock_data(num_examples=12):
        data = TextClassificationData(config)
        train = list(itertools.islice(data.train_iterator(), 4))
        evaluation = list(data.eval_batches("validation"))
    assert data.steps_per_epoch == 3 and data.num_examples("validation") == 12
    for batch in train:
        assert set(batch) == BATCH_KEYS and batch["input_ids"].shape == (4, 16)
        assert batch["input_ids"].dtype == batch["label"].dtype == np.int32
    assert len(evaluation) == 3 and sum(b["weight"].sum() for b in evaluation) == 12


def test_tfds_feature_errors(minilm_vocab):
    config = make_config(minilm_vocab, source="tfds", tfds_name="imdb_reviews", text_field="sentence")
    with (
        tfds.testing.mock_data(num_examples=4),
        pytest.raises(ValueError, match="config.data.text_field='sentence'"),
    ):
        TextClassificationData(config)
    config.data.tfds_name = "no_such_dataset"
    with pytest.raises(ValueError, match="config.data.tfds_name='no_such_dataset' is not a TFDS dataset"):
        TextClassificationData(config)


def test_tfds_hosts_read_disjoint_slices_once(tmp_path, minilm_vocab, ids_of):
    # TFDS 4.9.10 imports this undeclared dependency to prepare any dataset (tensorflow/datasets#11212).
    pytest.importorskip("importlib_resources")
    LmTinyReviews(data_dir=str(tmp_path)).download_and_prepare()
    config = make_config(
        minilm_vocab,
        source="tfds",
        tfds_name="lm_tiny_reviews",
        tfds_data_dir=str(tmp_path),
        train_split="train[:80%]",
        validation_split="train[80%:]",
        test_split="test",
    )
    hosts = [TextClassificationData(config, process_index=i, process_count=2) for i in range(2)]
    assert [h.num_examples(s) for h in hosts[:1] for s in ("train", "validation", "test")] == [24, 6, 11]
    assert [h.steps_per_epoch for h in hosts] == [6, 6]
    train_ids, test_ids = ids_of(make_rows(30, names=False)), ids_of(make_rows(11, start=100, names=False))
    epoch = [train_indices(itertools.islice(h.train_iterator(), 6), train_ids) for h in hosts]
    assert not set(epoch[0]) & set(epoch[1]) and len(set(epoch[0] + epoch[1])) == 24
    seen = [eval_examples(h, "test", test_ids) for h in hosts]
    assert seen[0][1] == seen[1][1] == 3, "every host yields the same number of batches"
    assert sorted(seen[0][0] + seen[1][0]) == [(i, i % 2) for i in range(11)]
    config.data.test_split = "tset"
    with pytest.raises(ValueError, match=r"config.data.test_split='tset' is not a split of lm_tiny_reviews"):
        TextClassificationData(config)
