"""Length bucketing of text batches: smallest bucket, every example once, exact resume, hosts agree, training."""

import collections
import itertools

import numpy as np
import pytest

import lm
from input_pipeline import bucketing
from input_pipeline.text_classification import TextClassificationData
from tests import text_data
from tests.test_train import _final_params, _StopAfter, files_config

BUCKETS = (8, 12, 16)
MAX_LENGTH = 24


def mixed_rows(num: int, seed: int = 0) -> list[tuple[str, str]]:
    """Sentences of 7-15 tokens, one in eight doubled (longer than 16 tokens, some truncated at 24)."""
    rows = text_data.sentiment_rows(num, seed)
    return [(f"{text} {text}" if i % 8 == 3 else text, label) for i, (text, label) in enumerate(rows)]


def make_config(vocab, csv_path, **overrides):
    """The smoke config on the CSV, max_length 24, buckets 8/12/16, batches of 8."""
    settings = {"data.max_length": MAX_LENGTH, "data.bucket_lengths": BUCKETS, "global_batch_size": 8,
                "eval_batch_size": 8, **overrides}
    return files_config(vocab, csv_path, **settings)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    return text_data.write_csv(tmp_path_factory.mktemp("bucketing") / "reviews.csv", mixed_rows(200))


def smallest(lengths, buckets=(*BUCKETS, MAX_LENGTH)):
    return min(b for b in buckets if b >= max(lengths))


def test_bucket_lengths_from_config(small_vocab, csv_path):
    config = make_config(small_vocab, csv_path, **{"data.bucket_lengths": (16, 32, 64, 128), "data.max_length": 64})
    assert bucketing.bucket_lengths(config) == (16, 32, 64)
    config.data.bucket_lengths = ()
    assert bucketing.bucket_lengths(config) == (64,)
    config.data.bucket_lengths = (32, 16)
    with pytest.raises(ValueError, match=r"config.data.bucket_lengths=\(32, 16\) must be increasing"):
        bucketing.bucket_lengths(config)
    np.testing.assert_array_equal(bucketing.smallest_bucket(np.array([2, 16, 17, 64]), (16, 32, 64)), [16, 16, 32, 64])


def test_smallest_bucket_every_example_once_same_as_fixed_padding(small_vocab, csv_path):
    data = TextClassificationData(make_config(small_vocab, csv_path))
    fixed = TextClassificationData(make_config(small_vocab, csv_path, **{"data.bucket_lengths": ()}))
    steps = data.steps_per_epoch
    seen, shapes = [], set()
    for batch, full in itertools.islice(zip(data.train_iterator(), fixed.train_iterator(), strict=True), steps):
        length = batch["input_ids"].shape[1]
        shapes.add(length)
        assert full["input_ids"].shape[1] == MAX_LENGTH
        assert length == smallest(batch["attention_mask"].sum(axis=1))
        for key in bucketing.TOKEN_KEYS:  # Only padding was dropped.
            np.testing.assert_array_equal(batch[key], full[key][:, :length])
            assert not full["attention_mask"][:, length:].any()
        np.testing.assert_array_equal(batch["label"], full["label"])
        seen.extend(map(tuple, full["input_ids"]))
    assert len(shapes) > 1, shapes  # The data spans buckets.
    # No example lost or repeated in the epoch (the epoch holds every training example here).
    assert steps * 8 == data.num_train_examples
    texts = data.examples.all_examples("train").map(lambda example: example["text"]).batch(64)
    every = [tuple(row) for batch in texts.as_numpy_iterator() for row in data.tokenizer(batch)["input_ids"].numpy()]
    assert collections.Counter(seen) == collections.Counter(every)

    evaluated = 0
    for batch in data.eval_batches("validation"):
        assert batch["input_ids"].shape[1] == smallest(batch["attention_mask"].sum(axis=1))
        evaluated += int(batch["weight"].sum())
    assert evaluated == data.num_examples("validation")


def test_resume_is_exact_across_buckets(small_vocab, csv_path):
    data = TextClassificationData(make_config(small_vocab, csv_path))
    total = 2 * data.steps_per_epoch + 3
    straight = list(itertools.islice(data.train_iterator(0), total))
    for start in (1, data.steps_per_epoch - 1, data.steps_per_epoch + 2):
        for a, b in zip(straight[start:], itertools.islice(data.train_iterator(start), total - start), strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].shape == b[key].shape
                np.testing.assert_array_equal(a[key], b[key])


def test_two_hosts_pad_each_step_to_the_global_batch_bucket(small_vocab, csv_path):
    config = make_config(small_vocab, csv_path)
    one = TextClassificationData(config)
    hosts = [TextClassificationData(config, i, 2) for i in range(2)]
    total = one.steps_per_epoch + 4
    batches = [list(itertools.islice(h.train_iterator(0), total)) for h in [one, *hosts]]
    for whole, first, second in zip(*batches, strict=True):
        length = whole["input_ids"].shape[1]  # One host: the global batch's own longest.
        assert first["input_ids"].shape[1] == second["input_ids"].shape[1] == length
        for key in bucketing.TOKEN_KEYS:  # The same global batch as one host's.
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])
    assert len({b["input_ids"].shape[1] for b in batches[0]}) > 1
    for split in ("validation", "test"):
        evaluated = 0
        for first, second in zip(*(h.eval_batches(split) for h in hosts), strict=True):
            lengths = np.concatenate([first["attention_mask"], second["attention_mask"]]).sum(axis=1)
            assert first["input_ids"].shape[1] == second["input_ids"].shape[1] == smallest(lengths)
            evaluated += int(first["weight"].sum() + second["weight"].sum())
        assert evaluated == one.num_examples(split)


@pytest.mark.slow
def test_training_compiles_once_per_bucket_and_resumes(tmp_path, small_vocab, csv_path, caplog, monkeypatch):
    """A run over batches of two lengths compiles two steps (logged) and ends where a resumed run ends."""
    config = make_config(small_vocab, csv_path, num_train_steps=8, checkpoint_every=4, eval_every=100,
                         **{"data.bucket_lengths": (16,)})  # Dropout on: resume replays its bits too.
    with caplog.at_level("INFO", logger="lm.train"):
        lm.run(config, str(tmp_path / "straight"), "train")
    compiles = [r.getMessage() for r in caplog.records if "compiled the train step" in r.getMessage()]
    assert len(compiles) == 2, compiles

    original = TextClassificationData.train_iterator
    monkeypatch.setattr(TextClassificationData, "train_iterator",
                        lambda self, start_step=0: _StopAfter(original(self, start_step), 5))
    with pytest.raises(KeyboardInterrupt):
        lm.run(config, str(tmp_path / "stopped"), "train")
    monkeypatch.setattr(TextClassificationData, "train_iterator", original)
    lm.run(config, str(tmp_path / "stopped"), "train")
    straight, straight_step = _final_params(tmp_path / "straight")
    resumed, resumed_step = _final_params(tmp_path / "stopped")
    assert straight_step == resumed_step == 8
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
