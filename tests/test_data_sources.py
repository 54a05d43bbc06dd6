"""Data sources and pipelines by registry: a source defined here, in the test file, trains; one split rule;
text files in another encoding; paths on TensorFlow's in-memory file system (ram://)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import input_pipeline
import lm
from input_pipeline import common, registry, source
from input_pipeline.image_classification import ImageClassificationData
from input_pipeline.text_classification import TextClassificationData
from tests import text_data
from tests.test_image_pipeline import make_config as image_config
from tests.test_train import files_config

NAMES = ("negative", "positive")


@input_pipeline.register_source("toy_reviews", fields=[("text", "label")])
def toy_reviews(request: source.Request) -> source.InMemory:
    """A source written outside input_pipeline/: 80 synthetic reviews in memory, checked by the pipeline."""
    rows = text_data.sentiment_rows(80, seed=request.config.seed)
    examples = [request.keep("toy", "toy", f"toy row {i}", {"text": text, "label": label})
                for i, (text, label) in enumerate(rows)]
    return source.InMemory(description="toy reviews", class_names=list(NAMES),
                           splits={"train": source.columns([e for e in examples if e], request.fields)})


@input_pipeline.register_source("toy_images", fields=[("image", "label")], streaming=True)
def toy_images(request: source.Request) -> source.Streamed:
    """A streamed source: each host's slice as tf.data, uniform 6x6 RGB images whose value names the example."""
    loaded = source.Streamed(description="toy images", class_names=["dark", "light"])
    for split, num in (("train", 24), ("test", 10)):
        ids = np.arange(num) + (100 if split == "test" else 0)
        images = np.repeat(ids.astype(np.uint8)[:, None, None, None], 6 * 6 * 3).reshape(num, 6, 6, 3)
        hosts = np.array_split(np.arange(num), request.process_count)
        loaded.counts[split] = [len(h) for h in hosts]
        loaded.datasets[split] = {
            i: tf.data.Dataset.from_tensor_slices({"image": images[h], "label": (ids[h] % 2).astype(np.int32)})
            for i, h in enumerate(hosts)
        }
    return loaded


def test_a_source_defined_in_a_test_file_trains_resumes_and_evaluates(tmp_path, small_vocab):
    config = files_config(small_vocab, "", **{"data.source": "toy_reviews", "num_train_steps": 2,
                                              "checkpoint_every": 2, "eval_every": 2})
    first = lm.run(config, str(tmp_path / "run"), "train")
    config.num_train_steps = 4
    resumed = lm.run(config, str(tmp_path / "run"), "train")  # Restores step 2 and trains on.
    assert first["test"]["step"] == 2 and resumed["test"]["step"] == 4
    assert resumed["test"]["num_examples"] == 8  # 10% of the 80 toy reviews.
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]


def test_a_streamed_source_from_a_test_file_feeds_the_image_pipeline():
    config = image_config(2, source="toy_images", image_size=6, augmentation="none", mean=(0.0,), std=(1.0,),
                          shuffle_buffer=1)
    hosts = [ImageClassificationData(config, i, 2) for i in range(2)]
    assert hosts[0].class_names == ["dark", "light"] and [h.steps_per_epoch for h in hosts] == [6, 6]
    train = [_pixel_ids(itertools.islice(h.train_iterator(), 6)) for h in hosts]
    assert sorted(train[0] + train[1]) == list(range(24))
    test = [_pixel_ids(h.eval_batches("test")) for h in hosts]
    assert sorted(test[0] + test[1]) == list(range(100, 110)), "each test example once, padding left out"


def _pixel_ids(batches) -> list[int]:
    """The ids of toy images (their pixel value) in batches, leaving out weight-0 padding."""
    ids = []
    for batch in batches:
        weights = batch.get("weight", np.ones(len(batch["label"])))
        ids += [round(float(v) * 255) for v, w in zip(batch["image"][:, 0, 0, 0], weights, strict=True) if w]
    return ids


def test_sources_and_pipelines_are_looked_up_by_name(tmp_path, small_vocab):
    assert {"tfds", "files", "toy_reviews"} <= set(registry.source_names(("text", "label")))
    assert "toy_reviews" not in registry.source_names(("image", "label"))
    config = files_config(small_vocab, "", **{"data.source": "toy_reviews"})
    data = input_pipeline.create_data(config, 0, 1, pipeline="text_classification")
    assert isinstance(data, TextClassificationData) and data.num_examples("train") == 64
    with pytest.raises(ValueError, match=r"config.data.source='toy_images': use one of \('tfds', 'files'"):
        input_pipeline.create_data(files_config(small_vocab, "", **{"data.source": "toy_images"}),
                                   pipeline="text_classification")
    with pytest.raises(ValueError, match="No input pipeline 'audio'"):
        input_pipeline.create_data(config, pipeline="audio")
    input_pipeline.register_pipeline("my_images", ImageClassificationData)
    digits = input_pipeline.create_data(image_config(source="digits"), pipeline="my_images")
    assert digits.num_classes == 10


def test_one_carving_rule_is_seeded_stratified_and_exact():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 5)
    carved = common.carve_splits(45, {"validation": 0.2, "test": 0.1}, seed=3, strata=labels)
    assert [len(carved[s]) for s in ("validation", "test", "train")] == [9, 4, 32]
    assert sorted(np.concatenate(list(carved.values())).tolist()) == list(range(45))
    assert [int((labels[carved["validation"]] == k).sum()) for k in range(3)] == [6, 2, 1], "in proportion"
    again = common.carve_splits(45, {"validation": 0.2, "test": 0.1}, seed=3, strata=labels)
    assert all(np.array_equal(carved[s], again[s]) for s in carved)
    other = common.carve_splits(45, {"validation": 0.2, "test": 0.1}, seed=4, strata=labels)
    assert not np.array_equal(carved["validation"], other["validation"])
    plain = common.carve_splits(10, {"validation": 0.01}, seed=0)
    assert len(plain["validation"]) == 1 and len(plain["train"]) == 9, "at least one example"


def _latin1_tsv(path):
    rows = [(text.replace("movie", "café movie"), label) for text, label in text_data.sentiment_rows(64)]
    lines = ["review\tsentiment", *(f"{text}\t{label}" for text, label in rows)]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return path


def test_a_latin1_file_names_file_and_line_then_trains_with_its_encoding(tmp_path, small_vocab):
    path = _latin1_tsv(tmp_path / "reviews.tsv")
    first_line = next(n for n, line in enumerate(path.read_bytes().split(b"\n"), 1) if b"\xe9" in line)
    config = files_config(small_vocab, path, **{"num_train_steps": 2, "eval_every": 2, "checkpoint_every": 2})
    with pytest.raises(ValueError, match=rf"reviews.tsv line {first_line}: .* config.data.encoding='utf-8'") as error:
        TextClassificationData(config)
    assert "latin-1" in str(error.value) and "Traceback" not in str(error.value)
    config.data.encoding = "latin-1"
    data = TextClassificationData(config)
    assert "café" in " ".join(data.examples.splits["train"]["text"])
    assert lm.run(config, str(tmp_path / "run"), "train")["test"]["step"] == 2
    config.data.encoding = "klingon"
    with pytest.raises(ValueError, match="config.data.encoding='klingon' is not a text encoding"):
        TextClassificationData(config)


def test_files_on_tensorflow_ram_file_system(small_vocab):
    folder = "ram://lm-data-test"
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(f"{folder}/vocab.txt", "w") as f:
        f.write(small_vocab.read_text())
    with tf.io.gfile.GFile(f"{folder}/reviews.csv", "w") as f:
        f.write("review,sentiment\n" + "".join(f"{t},{s}\n" for t, s in text_data.sentiment_rows(40)))
    config = files_config(f"{folder}/vocab.txt", f"{folder}/*.csv")
    data = TextClassificationData(config)
    assert data.num_examples("train") == 32 and next(data.train_iterator())["input_ids"].shape == (16, 32)
