"""Image classification pipeline: TFDS mock data, image folders, digits, arrays, augmentations, errors."""

import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs import common, vision_data
from input_pipeline import augment
from input_pipeline.image_classification import ImageClassificationData
from input_pipeline.sources import arrays as array_source
from input_pipeline.sources import tfds as tfds_source

CLASSES = ("cat", "dog", "emu")
PER_CLASS = 8


def make_config(num_classes=10, **data):
    config = common.training_defaults()
    config.global_batch_size = 4
    config.eval_batch_size = 4
    config.model = ml_collections.ConfigDict({"num_classes": num_classes})
    config.data = vision_data.image_data_config()
    config.data.update(data)
    return config


def pixel_value(image_id):
    return 10 + 9 * image_id


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 class folders of 8 uniform images each (PNG and JPEG, 12x16 and 16x12, RGB and grayscale).

    Image k*8+j of class k is filled with pixel_value(k*8+j), so any crop, flip or resize names it.
    """
    root = tmp_path_factory.mktemp("images")
    for k, name in enumerate(CLASSES):
        (root / name).mkdir()
        for j in range(PER_CLASS):
            image_id = k * PER_CLASS + j
            size = (12, 16) if j % 2 else (16, 12)
            mode = "L" if j == 2 else "RGB"
            image = Image.new(
                mode, size, pixel_value(image_id) if mode == "L" else (pixel_value(image_id),) * 3
            )
            image.save(root / name / f"{j:02d}.{'jpg' if j % 2 else 'png'}", quality=95)
        (root / name / "notes.txt").write_text("not an image")
    return root


def folder_config(root, **data):
    """The folder above, carved 15/6/3, 8x8, no augmentation, unnormalised (mean 0, std 1)."""
    settings = {"source": "folder", "train_dir": str(root), "image_size": 8, "augmentation": "none"}
    settings.update(mean=(0.0,), std=(1.0,), validation_fraction=0.25, test_fraction=0.125)
    return make_config(num_classes=3, **{**settings, **data})


def image_ids(images):
    """Image ids from the centre pixels of unnormalised (mean 0, std 1) batches of folder images."""
    centre = images[:, images.shape[1] // 2, images.shape[2] // 2, 0]
    return [int(i) for i in np.round((centre * 255 - 10) / 9)]


def eval_ids(data, split):
    """(image id, label) of the real examples of a split in batch order, and the batch count."""
    batches = list(data.eval_batches(split))
    found = [
        (image_id, int(label))
        for b in batches
        for image_id, label, weight in zip(image_ids(b["image"]), b["label"], b["weight"], strict=True)
        if weight == 1
    ]
    assert all(b["weight"].dtype == np.float32 for b in batches)
    return found, len(batches)


# ----------------------------------------------------------------------------------------------------
# TFDS (mock data).


@pytest.mark.parametrize(
    ("name", "classes", "channels", "overrides"),
    [
        ("mnist", 10, 1, {}),
        ("cifar10", 10, 3, {"flip": True}),
        ("cifar10", 10, 1, {"channels": 1}),
        ("oxford_iiit_pet", 37, 3, {"augmentation": "inception_crop", "mixup_alpha": 0.2}),
    ],
)
def test_tfds_mock_data_batches(monkeypatch, name, classes, channels, overrides):
    config = make_config(classes, source="tfds", tfds_name=name, image_size=16, **overrides)
    with tfds.testing.mock_data(num_examples=12):
        data = ImageClassificationData(config)
    # Every dataset was built in the constructor: as_dataset under mock_data patches the whole process.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", lambda *a, **k: pytest.fail("as_dataset"))
    train = list(itertools.islice(data.train_iterator(), 4))
    evaluation = list(data.eval_batches("test"))
    assert data.num_classes == len(data.class_names) == classes and data.steps_per_epoch == 3
    assert data.image_shape == (16, 16, channels)
    for batch in train:
        assert batch["image"].shape == (4, 16, 16, channels) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
        assert ((batch["label"] >= 0) & (batch["label"] < classes)).all()
        assert ("label_probs" in batch) == ("mixup_alpha" in overrides)
    assert len(evaluation) == 3 and sum(b["weight"].sum() for b in evaluation) == 12
    assert abs(np.mean([b["image"].mean() for b in evaluation])) < 2, "normalised"


class LmTinyImages(tfds.core.GeneratorBasedBuilder):
    """A real (not mocked) TFDS image dataset with split metadata: 20 train, 7 test uniform 8x8 images."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(names=CLASSES),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 20), "test": self._generate_examples(20, 27)}

    def _generate_examples(self, start, stop):
        for i in range(start, stop):
            yield i, {"image": np.full((8, 8, 3), pixel_value(i), np.uint8), "label": i % 3}


def test_tfds_hosts_read_disjoint_slices_once(tmp_path, monkeypatch):
    # TFDS 4.9.10 imports this undeclared dependency to prepare any dataset (tensorflow/datasets#11212).
    pytest.importorskip("importlib_resources")
    LmTinyImages(data_dir=str(tmp_path)).download_and_prepare()
    spec = tfds_source.TfdsImages(3, ("train[:80%]", "train[80%:]", "test"), augment.Defaults(3, (0.0,), (1.0,), False))
    monkeypatch.setitem(tfds_source.IMAGE_DATASETS, "lm_tiny_images", spec)
    config = make_config(3, source="tfds", tfds_name="lm_tiny_images", tfds_data_dir=str(tmp_path))
    config.data.update(image_size=8, augmentation="none", shuffle_buffer=8)
    hosts = [ImageClassificationData(config, i, 2) for i in range(2)]
    assert [hosts[0].num_examples(s) for s in ("train", "validation", "test")] == [16, 4, 7]
    assert [h.steps_per_epoch for h in hosts] == [4, 4]
    batches = [list(itertools.islice(h.train_iterator(), 8)) for h in hosts]
    epochs = [
        [[i for b in host[e * 4 : e * 4 + 4] for i in image_ids(b["image"])] for e in (0, 1)]
        for host in batches
    ]
    validation = [i for i, _ in eval_ids(hosts[0], "validation")[0] + eval_ids(hosts[1], "validation")[0]]
    assert not set(epochs[0][0]) & set(epochs[1][0]), "hosts train on disjoint slices"
    assert sorted(epochs[0][0] + epochs[1][0] + validation) == list(range(20)), "train[:80%] + train[80%:]"
    assert sorted(epochs[0][0]) == sorted(epochs[0][1]) and epochs[0][0] != epochs[0][1], "reshuffled"
    resumed = list(itertools.islice(hosts[0].train_iterator(start_step=3), 5))
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(batches[0][3:], resumed, strict=True))
    seen = [eval_ids(h, "test") for h in hosts]
    assert seen[0][1] == seen[1][1] == 2, "every host yields the same number of batches"
    assert sorted(seen[0][0] + seen[1][0]) == [(i, i % 3) for i in range(20, 27)]
    config.data.test_split = "tset"
    with pytest.raises(
        ValueError, match=r"config.data.test_split='tset' is not a valid split of lm_tiny_images"
    ):
        ImageClassificationData(config)


def test_imagenet_needs_the_manual_download_dir(tmp_path):
    config = make_config(1000, source="tfds", tfds_name="imagenet2012", tfds_data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="it needs your manual download dir, config.data.tfds_manual_dir=''"):
        ImageClassificationData(config)
    config.data.tfds_manual_dir = str(tmp_path)
    with pytest.raises(ValueError, match="ILSVRC2012_img_train.tar.*https://image-net.org"):
        ImageClassificationData(config)


# ----------------------------------------------------------------------------------------------------
# Image folders.


def test_folder_splits_disjointly_and_deterministically(image_folder):
    data = ImageClassificationData(folder_config(image_folder))
    assert data.class_names == list(CLASSES) and data.image_shape == (8, 8, 3)
    assert [data.num_examples(s) for s in ("train", "validation", "test")] == [15, 6, 3]
    found = {split: eval_ids(data, split)[0] for split in ("train", "validation", "test")}
    ids = {split: [i for i, _ in examples] for split, examples in found.items()}
    assert sorted(itertools.chain(*ids.values())) == list(range(24)), "disjoint and complete"
    assert all(label == i // PER_CLASS for examples in found.values() for i, label in examples)
    assert [sum(i // PER_CLASS == k for i in ids["validation"]) for k in range(3)] == [2, 2, 2], "per class"
    assert eval_ids(ImageClassificationData(folder_config(image_folder)), "test")[0] == found["test"]
    other_seed = folder_config(image_folder)
    other_seed.seed = 1
    assert eval_ids(ImageClassificationData(other_seed), "validation")[0] != found["validation"]


def test_folder_hosts_read_disjoint_slices_and_evaluate_exactly_once(image_folder):
    hosts = [ImageClassificationData(folder_config(image_folder), i, 2) for i in range(2)]
    assert [h.steps_per_epoch for h in hosts] == [3, 3] and hosts[0].train_batch_size == 2
    epoch = [
        [i for b in itertools.islice(h.train_iterator(), 3) for i in image_ids(b["image"])] for h in hosts
    ]
    assert not set(epoch[0]) & set(epoch[1]) and len(set(epoch[0] + epoch[1])) == 12
    seen = [eval_ids(h, "test") for h in hosts]
    assert seen[0][1] == seen[1][1] == 1, "every host yields the same number of batches"
    single = eval_ids(ImageClassificationData(folder_config(image_folder)), "test")[0]
    assert sorted(seen[0][0] + seen[1][0]) == sorted(single) and len(single) == 3


@pytest.mark.parametrize(
    "augmentation",
    [
        {"augmentation": "inception_crop", "flip": True},
        {"augmentation": "pad_crop", "pad": 2, "flip": True, "mixup_alpha": 0.4},
    ],
)
def test_train_iterator_resumes_exactly(image_folder, augmentation):
    data = ImageClassificationData(folder_config(image_folder, **augmentation))
    assert data.steps_per_epoch == 3
    full = list(itertools.islice(data.train_iterator(), 8))
    for start in (2, 5):
        resumed = list(itertools.islice(data.train_iterator(start_step=start), 8 - start))
        for a, b in zip(full[start:], resumed, strict=True):
            assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    epochs = [np.concatenate([b["image"] for b in full[e * 3 : e * 3 + 3]]) for e in range(2)]
    assert not np.array_equal(epochs[0], epochs[1]), "a new order and new augmentations each epoch"
    if "mixup_alpha" in augmentation:
        probs = np.concatenate([b["label_probs"] for b in full])
        labels = np.concatenate([b["label"] for b in full])
        assert probs.shape == (32, 3) and np.allclose(probs.sum(axis=1), 1) and (probs >= 0).all()
        assert (probs[np.arange(32), labels] >= 0.5).all(), "an example's own label dominates"
    else:
        for batch in full:  # Uniform images: crops and flips keep the centre pixel, hence the label.
            assert [i // PER_CLASS for i in image_ids(batch["image"])] == list(batch["label"])


def test_eval_preprocessing_is_deterministic(image_folder):
    data = ImageClassificationData(folder_config(image_folder, image_size=12, eval_resize=14))
    first, second = list(data.eval_batches("validation")), list(data.eval_batches("validation"))
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, second, strict=True))
    assert first[0]["image"].shape == (4, 12, 12, 3)
    k, j = divmod(image_ids(first[0]["image"])[0], PER_CLASS)
    encoded = (image_folder / CLASSES[k] / f"{j:02d}.{'jpg' if j % 2 else 'png'}").read_bytes()
    decoded = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    np.testing.assert_allclose(data.preprocess_eval(decoded), first[0]["image"][0], atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Digits and arrays.


def test_digits_split_counts_add_up():
    data = ImageClassificationData(make_config())
    counts = [data.num_examples(s) for s in ("train", "validation", "test")]
    assert sum(counts) == 1797 and counts[1] == counts[2] == pytest.approx(0.15 * 1797, abs=10)
    assert data.image_shape == (32, 32, 1) and data.class_names == [str(i) for i in range(10)]
    batch = next(data.eval_batches("test"))
    assert batch["image"].shape == (4, 32, 32, 1) and batch["label"].dtype == np.int32
    assert -1 < batch["image"].min() < 0 < batch["image"].max() < 2.5, "normalised by the digits' statistics"


def test_arrays_from_npz_and_registry(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8), np.arange(30) % 4
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5], class_names=list("abcd"))
    config = make_config(
        4, source="arrays", arrays_path=str(tmp_path / "a.npz"), image_size=6, test_fraction=0.5
    )
    data = ImageClassificationData(config)
    assert [data.num_examples(s) for s in ("train", "validation", "test")] == [26, 4, 5], "1 per class"
    assert data.class_names == list("abcd") and data.image_shape == (6, 6, 3)
    test = next(data.eval_batches("test"))
    expected = (x[:4] / 255 - 0.5) / 0.5
    np.testing.assert_allclose(test["image"], expected, atol=1e-5)
    array_source.register_arrays("floats", rng.random((20, 5, 5)), np.arange(20) % 2)
    config = make_config(2, source="arrays", arrays_name="floats", image_size=5, channels=3)
    data = ImageClassificationData(config)
    assert data.num_classes == 2 and next(data.train_iterator())["image"].shape == (4, 5, 5, 3)


# ----------------------------------------------------------------------------------------------------
# Augmentation ops.


def seed_of(epoch, index):
    return augment.example_seed(tf.constant([0, 3], tf.int64), epoch, index)


@pytest.fixture(scope="module")
def photo():
    return tf.random.stateless_uniform([20, 28, 3], seed=[1, 2])


def test_augmentations_keep_shape_and_range(photo):
    outputs = [
        augment.inception_crop(photo, seed_of(0, 0), 16),
        augment.pad_crop(photo, seed_of(0, 0), 4),
        augment.random_flip(photo, seed_of(0, 0)),
        augment.resize(photo, 9),
        augment.resize_shorter_and_centre_crop(photo, 18, 16),
        augment.set_channels(augment.to_unit_float(tf.cast(photo * 255, tf.uint8)), 1),
    ]
    shapes = [(16, 16, 3), (20, 28, 3), (20, 28, 3), (9, 9, 3), (16, 16, 3), (20, 28, 1)]
    for image, shape in zip(outputs, shapes, strict=True):
        assert tuple(image.shape) == shape and image.dtype == tf.float32
        assert 0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 1


def test_flip_flips(photo):
    results = [augment.random_flip(photo, seed_of(0, i)).numpy() for i in range(8)]
    flipped = [np.array_equal(r, photo.numpy()[:, ::-1]) for r in results]
    kept = [np.array_equal(r, photo.numpy()) for r in results]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


@pytest.mark.parametrize(
    "crop", [lambda im, s: augment.pad_crop(im, s, 4), lambda im, s: augment.inception_crop(im, s, 16)]
)
def test_random_crops_are_deterministic_and_differ_across_epochs(photo, crop):
    first, again, next_epoch = (
        crop(photo, seed_of(0, 5)),
        crop(photo, seed_of(0, 5)),
        crop(photo, seed_of(1, 5)),
    )
    assert np.array_equal(first, again) and not np.array_equal(first, next_epoch)


def test_mixup_soft_labels_sum_to_one():
    images = tf.random.stateless_uniform([6, 4, 4, 3], seed=[0, 1])
    labels = tf.constant([0, 1, 2, 3, 4, 0])
    mixed, probs = augment.mixup(images, labels, tf.constant([3, 4], tf.int64), alpha=1.0, num_classes=5)
    assert mixed.shape == images.shape and probs.shape == (6, 5)
    np.testing.assert_allclose(tf.reduce_sum(probs, axis=1), 1.0, rtol=1e-6)
    lam = float(probs[1, 1])
    assert 0.5 <= lam <= 1
    np.testing.assert_allclose(mixed[0], lam * images[0] + (1 - lam) * images[1], rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Configs and errors.


def test_presets_agree_with_the_pipeline():
    for name, spec in tfds_source.IMAGE_DATASETS.items():
        assert vision_data.DATASET_NUM_CLASSES[name] == spec.num_classes
        assert vision_data.image_data_config(name).tfds_name == name
    with pytest.raises(ValueError, match="Unknown image dataset preset 'svhn'"):
        vision_data.image_data_config("svhn")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"source": "csv"}, r"config.data.source='csv': use one of \('tfds', 'folder'"),
        (
            {"source": "tfds", "tfds_name": "svhn"},
            r"config.data.tfds_name='svhn' is not a known .* \['cifar10'",
        ),
        ({"image_size": 0}, "config.data.image_size=0 must be a positive integer"),
        ({"image_size": -8}, "config.data.image_size=-8 must be a positive integer"),
        ({"channels": 2}, "config.data.channels=2: use 1"),
        ({"augmentation": "autoaugment"}, "config.data.augmentation='autoaugment'"),
        ({"eval_resize": 20}, "config.data.eval_resize=20 is smaller than config.data.image_size=32"),
        ({"mean": (0.1, 0.2, 0.3)}, r"config.data.mean=\(0.1, 0.2, 0.3\) has 3 values for 1 channel"),
        ({"validation_fraction": 0.6, "test_fraction": 0.5}, "must each be in"),
        ({"source": "folder"}, "config.data.source='folder' needs config.data.train_dir"),
        (
            {"source": "folder", "train_dir": "/no/such/dir"},
            "config.data.train_dir='/no/such/dir' is not a folder",
        ),
        ({"source": "arrays"}, "needs exactly one of config.data.arrays_path"),
        ({"source": "arrays", "arrays_name": "nope"}, "config.data.arrays_name='nope' is not registered"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        ImageClassificationData(make_config(**overrides))


def test_batch_sizes_must_divide_among_hosts():
    config = make_config()
    config.eval_batch_size = 6
    with pytest.raises(
        ValueError, match=r"config.eval_batch_size=6 must be a positive multiple of the process"
    ):
        ImageClassificationData(config, process_index=0, process_count=4)


def test_num_classes_must_match_the_data(image_folder):
    with pytest.raises(
        ValueError, match=r"config.model.num_classes=5 but the data \(scikit-learn digits\) has 10"
    ):
        ImageClassificationData(make_config(num_classes=5))
    config = folder_config(image_folder)
    config.model.num_classes = 10
    with pytest.raises(ValueError, match=r"train_dir=.* has 3 classes; set config.model.num_classes=3"):
        ImageClassificationData(config)


def test_folder_errors(tmp_path):
    (tmp_path / "loose").mkdir()
    for name in ("a.png", "b.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / "loose" / name)
    with pytest.raises(ValueError, match=r"has no class sub-folders \(it holds 2 images directly\)"):
        ImageClassificationData(folder_config(tmp_path / "loose"))
    for name in ("cls_a", "cls_b"):
        (tmp_path / "classes" / name).mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "classes" / "cls_a" / "x.png")
    with pytest.raises(ValueError, match="the class folder 'cls_b' holds no JPEG or PNG image"):
        ImageClassificationData(folder_config(tmp_path / "classes"))
