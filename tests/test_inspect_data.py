"""--mode=inspect_data finds planted duplicates within and across splits, reports exactly the fraction of texts
that max_length truncates, image sizes and bad examples by kind, and writes WORKDIR/data_report.json."""

import itertools
import json

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

import lm
from configs import bert_sentiment, vision_classification
from tests import text_data


def _texts(count: int, length: int, offset: int) -> list[str]:
    """`count` distinct texts of `length` whole-token words each (one word piece a word)."""
    combos = itertools.islice(itertools.product(text_data.FILLER, repeat=3), offset, offset + count)
    return [" ".join([*combo, *["film"] * (length - 3)]) for combo in combos]


def _write_csv(path, rows):
    path.write_text("review,sentiment\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return str(path)


def test_text_report(tmp_path, small_vocab, capsys):
    short, long = _texts(30, 4, 0), _texts(10, 9, 100)  # max_length 8 keeps 6 pieces: the 9-word texts lose 3.
    train = [(t, "positive") for t in short + long] + [(short[0], "positive"), (short[1], "negative")]
    train += [("", "positive"), ("a film", "neutral")]  # Bad: an empty text, a label not in label_names.
    validation = [(t, "negative") for t in _texts(8, 4, 200)] + [(short[2], "positive")]  # One leaked from train.
    test = [(t, "negative") for t in _texts(6, 4, 300)] + [(short[3], "positive"), (validation[0][0], "negative")]
    config = bert_sentiment.get_config("files,smoke")
    config.data.update(
        train_files=_write_csv(tmp_path / "train.csv", train), test_files=_write_csv(tmp_path / "test.csv", test),
        validation_files=_write_csv(tmp_path / "dev.csv", validation), text_field="review", label_field="sentiment",
        label_names=("negative", "positive"), vocab_path=str(small_vocab), max_length=8,
    )
    config.model.vocab_size = -1
    report = lm.run(config, str(tmp_path / "run"), "inspect_data")

    assert json.loads((tmp_path / "run" / "data_report.json").read_text()) == report
    splits = report["splits"]
    assert {split: entry["examples"] for split, entry in splits.items()} == {"train": 42, "validation": 9, "test": 8}
    assert splits["train"]["per_class"] == {"negative": 1, "positive": 41}
    length = splits["train"]["length"]
    assert (length["truncated"], length["truncated_fraction"]) == (10, 10 / 42)
    assert length["word_pieces"]["max"] == 9 and length["word_pieces"]["p50"] == 4
    assert splits["train"]["duplicates"]["extra_copies"] == 2  # short[0] and short[1] appear twice each.
    across = report["duplicates_across"]
    assert across["train/validation"]["examples_in_both"] == 1 and across["train/validation"]["examples"] == [short[2]]
    assert across["train/test"]["examples_in_both"] == 1 and across["validation/test"]["examples_in_both"] == 1
    assert report["bad_examples"] == {"train_files": {"empty text or label": 1, "label not in label_names": 1}}
    console = capsys.readouterr().out
    assert "10 (23.81%) over max_length 8" in console and "leakage train/validation: 1 example(s)" in console


def test_image_report(tmp_path):
    rng = np.random.default_rng(0)
    leaked = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    for split, per_class in (("train", 6), ("test", 2)):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (12, 16) if i % 2 else (20, 20)
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(leaked).save(tmp_path / "train" / "cat" / "leaked.png")
    Image.fromarray(leaked).save(tmp_path / "train" / "dog" / "copy.png")  # The same pixels, another class.
    Image.fromarray(leaked).save(tmp_path / "test" / "cat" / "leaked.png")
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    config = vision_classification.get_config("resnet_small,folder,smoke")
    config.data.update(train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"), validation_fraction=0.0)
    report = lm.run(config, str(tmp_path / "run"), "inspect_data")

    train = report["splits"]["train"]
    assert train["examples"] == 14 and train["per_class"] == {"cat": 7, "dog": 7}
    assert train["duplicates"]["extra_copies"] == 1
    assert report["duplicates_across"]["train/test"]["examples_in_both"] == 1
    sizes = train["image_sizes"]
    assert sizes["distinct"] == 2 and sizes["smallest"] == [12, 16] and sizes["largest"] == [20, 20]
    assert report["bad_examples"] == {"train_dir": {"image does not decode": 1}}


def test_tfds_text_report(tmp_path, minilm_vocab):
    config = bert_sentiment.get_config("mini,imdb,smoke")
    config.data.vocab_path, config.model.vocab_size = str(minilm_vocab), -1
    with tfds.testing.mock_data(num_examples=12):
        report = lm.run(config, str(tmp_path / "run"), "inspect_data")
    assert {split: entry["examples"] for split, entry in report["splits"].items()} == {
        "train": 12, "validation": 12, "test": 12}
    length = report["splits"]["test"]["length"]
    assert length["max_length"] == 32 and 0 <= length["truncated_fraction"] <= 1
