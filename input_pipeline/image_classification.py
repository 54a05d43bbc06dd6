"""Image classification input: TFDS, an image folder, scikit-learn digits or in-memory arrays -> host batches.

`ImageClassificationData(config, process_index, process_count)` validates the data section of the config
(configs/vision_data.py) and the data itself (folders are listed, arrays checked, TFDS split sizes read from
the dataset's metadata) before anything compiles, then serves:

- `train_iterator(start_step)`: infinite per-host batches of `global_batch_size // process_count`:
  'image' float32 [b, S, S, C] (S = image_size), normalised per channel; 'label' int32 [b]; with mixup also
  'label_probs' float32 [b, num_classes]. Epoch e visits this host's share of the training set in an order
  seeded by (config.seed, e), cut to `steps_per_epoch` whole batches. Augmentation is stateless: example i
  of the training split is augmented in epoch e with a seed derived from (config.seed, e, i), and a batch is
  mixed with a seed from (config.seed, e, its first example). Batches never straddle epochs, so
  `start_step` resumes by arithmetic: whole epochs are skipped by number, steps inside one by skipping
  examples before decoding, and the resumed batches equal the uninterrupted ones bit for bit.
- `eval_batches(split)`: per-host batches of `eval_batch_size // process_count` with a 'weight' (1 real,
  0 padding); deterministic preprocessing (resize, or resize the shorter side and crop the centre);
  every example of the split appears once over all hosts and every host yields the same number of batches.

Per host. Folder, digits and arrays are held in memory (folders as file paths, decoded in tf.data): the
training set is permuted afresh each epoch and host i takes block i of each global batch of the permutation
(the global batches do not depend on the process count);
evaluation splits are sliced the same way unpermuted. TFDS: `tfds.even_splits` gives each host a fixed,
disjoint slice, shuffled each epoch in a `shuffle_buffer`-long buffer of still-encoded images. Every TFDS
dataset is built (`as_dataset`) once, in the constructor: under `tfds.testing.mock_data` `as_dataset`
patches the file system of the whole process while it runs.

Folders: every image is decoded once when the folder is listed (a parallel tf.data pass over all cores;
about one epoch of decoding, per host). One that does not decode follows config.on_bad_example: 'error'
raises a ValueError naming the file and TensorFlow's reason; 'skip' leaves it out, logs the count once per
folder key with the files (process 0), and reports it in `skipped_examples`.

In-memory arrays from Python: `register_arrays(name, x_train, y_train, ...)`, then
config.data.source='arrays' and config.data.arrays_name=name.
"""

import dataclasses
import io
import os
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import augment
from input_pipeline.common import (
    AUGMENT_STREAM,
    MIXUP_STREAM,
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

SOURCES = ("tfds", "folder", "digits", "arrays")
AUGMENTATIONS = ("none", "pad_crop", "inception_crop")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_ARRAY_SUFFIXES = {"train": "train", "validation": "val", "test": "test"}


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What a dataset implies when the config leaves it open: channels, normalisation, eval resizing."""

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    photos: bool  # Photos of varied sizes: evaluate ImageNet-style (resize 1/0.875, centre crop).


PHOTOS = Defaults(3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), photos=True)
DIGITS = Defaults(1, (0.3053,), (0.3760,), photos=False)


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """A known TFDS image classification dataset: classes, default (train, validation, test) splits."""

    num_classes: int
    splits: tuple[str, str, str]
    defaults: Defaults
    image_key: str = "image"
    label_key: str = "label"
    manual_download: bool = False


TFDS_DATASETS = {
    "mnist": TfdsDataset(
        10, ("train[:90%]", "train[90%:]", "test"), Defaults(1, (0.1307,), (0.3081,), False)
    ),
    "cifar10": TfdsDataset(
        10,
        ("train[:90%]", "train[90%:]", "test"),
        Defaults(3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), False),
    ),
    "cifar100": TfdsDataset(
        100,
        ("train[:90%]", "train[90%:]", "test"),
        Defaults(3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), False),
    ),
    "oxford_iiit_pet": TfdsDataset(37, ("train[:90%]", "train[90%:]", "test"), PHOTOS),
    "oxford_flowers102": TfdsDataset(102, ("train", "validation", "test"), PHOTOS),
    # ImageNet's validation set is the usual test set; a 1% minival is carved from train (as big_vision).
    "imagenet2012": TfdsDataset(
        1000, ("train[:99%]", "train[99%:]", "validation"), PHOTOS, manual_download=True
    ),
}

_REGISTERED_ARRAYS: dict[str, dict[str, np.ndarray]] = {}


def register_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> None:
    """Makes in-memory arrays the data of config.data.source='arrays', config.data.arrays_name=name.

    Images: uint8 in [0, 255] or float in [0, 1], [N, H, W] or [N, H, W, C] with C 1 or 3; labels: integers
    in [0, num_classes). Splits left out are carved from train by validation_fraction/test_fraction.
    """
    arrays = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    arrays.update(x_test=x_test, y_test=y_test, class_names=class_names)
    _REGISTERED_ARRAYS[name] = {key: np.asarray(value) for key, value in arrays.items() if value is not None}


# ----------------------------------------------------------------------------------------------------
# In-memory sources: image folders (file paths), digits and arrays (pixels).


@dataclasses.dataclass(frozen=True)
class Examples:
    """A split in memory: items (images [N, H, W, C] or file paths [N]) and int32 labels [N]."""

    items: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> "Examples":
        return Examples(self.items[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A source read into memory, before slicing for this host."""

    splits: dict[str, Examples]
    class_names: list[str]
    defaults: Defaults
    files: bool  # items are image file paths (else pixels)
    description: str  # names the data in error messages
    bad_examples: BadExamples | None = None  # folders: the images that did not decode


def carve_splits(train: Examples, fractions: dict[str, float], seed: int) -> dict[str, Examples]:
    """Cuts the given fractions of each class out of train with a seeded permutation; the rest stays train."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAM]))
    parts: dict[str, list[np.ndarray]] = {split: [] for split in [*fractions, "train"]}
    for label in np.unique(train.labels):
        indices = rng.permutation(np.flatnonzero(train.labels == label))
        start = 0
        for split, fraction in fractions.items():
            count = round(fraction * len(indices))
            parts[split].append(indices[start : start + count])
            start += count
        parts["train"].append(indices[start:])
    return {split: train.take(np.sort(np.concatenate(chunks))) for split, chunks in parts.items()}


def complete_splits(
    train: Examples, given: dict[str, Examples], data: ml_collections.ConfigDict, seed: int
) -> dict[str, Examples]:
    """Splits not given are carved out of train by config.data.<split>_fraction (when > 0)."""
    fractions = {
        split: data[f"{split}_fraction"]
        for split in ("validation", "test")
        if split not in given and data[f"{split}_fraction"] > 0
    }
    splits = {**given, **carve_splits(train, fractions, seed)}
    if not len(splits["train"]):
        raise ValueError(
            f"No training example is left after carving out {fractions}: add data or lower "
            "config.data.validation_fraction/test_fraction."
        )
    return splits


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_image_folder(
    key: str, path: str, bad: BadExamples, class_names: list[str] | None = None
) -> tuple[Examples, list[str]]:
    """config.data.<key>: one sub-folder per class -> (file paths and labels, class names).

    Classes are the sorted sub-folder names, or, for validation/test folders, train's `class_names`. Images
    that do not decode go to `bad` (raise, or leave out and count): see `undecodable_images`.
    """
    fix = "Set it to a folder with one sub-folder of JPEG/PNG images per class."
    if not path:
        raise ValueError(f"config.data.source='folder' needs config.data.{key}. {fix}")
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"config.data.{key}={path!r} is not a folder or does not exist. {fix}")
    entries = sorted(entry.rstrip("/") for entry in tf.io.gfile.listdir(path))
    classes = [entry for entry in entries if tf.io.gfile.isdir(os.path.join(path, entry))]
    if not classes:
        loose = sum(_is_image(entry) for entry in entries)
        held = f" (it holds {loose} images directly)" if loose else ""
        raise ValueError(f"config.data.{key}={path!r} has no class sub-folders{held}, so no images. {fix}")
    unknown = sorted(set(classes) - set(class_names or classes))
    if unknown:
        raise ValueError(
            f"config.data.{key}={path!r}: class folders {unknown} are not classes of config.data.train_dir "
            f"({class_names}). Rename or remove them, or add them to the training folder."
        )
    index = {name: i for i, name in enumerate(class_names or classes)}
    listed = {}
    for name in classes:
        files = sorted(f for f in tf.io.gfile.listdir(os.path.join(path, name)) if _is_image(f))
        if not files:
            raise _empty_class_error(key, path, name, "JPEG or PNG image")
        listed[name] = [os.path.join(path, name, f) for f in files]
    broken = undecodable_images([file for files in listed.values() for file in files])  # One pass for all classes.
    for file, problem in broken.items():
        bad.report(key, file, f"{file}: the image does not decode ({problem}).")
    paths, labels = [], []
    for name, files in listed.items():
        good = [f for f in files if f not in broken]
        if not good:
            raise _empty_class_error(key, path, name, f"image that decodes ({len(files)} skipped)")
        paths.extend(good)
        labels.extend([index[name]] * len(good))
    return Examples(np.array(paths), np.array(labels, np.int32)), class_names or classes


def _empty_class_error(key: str, path: str, name: str, what: str) -> ValueError:
    return ValueError(
        f"config.data.{key}={path!r}: the class folder {name!r} holds no {what} "
        f"({', '.join(IMAGE_EXTENSIONS)}). Add images to it or remove it."
    )


def undecodable_images(paths: list[str]) -> dict[str, str]:
    """{path: why} for the files that do not read or decode as images.

    Every file is read and decoded once, in one parallel tf.data pass (all cores), when the folder is listed:
    a broken file then fails before training with its name, instead of stopping training midway with a
    TensorFlow error that names no file. It costs one decode of the data set per host at start.
    """
    if not paths:
        return {}

    def decoded_shape(index: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        return index, tf.shape(image)

    ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
    ds = ds.map(decoded_shape, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    decoded = {int(index) for index, _ in ds.as_numpy_iterator()}
    return {path: _decode_error(path) for i, path in enumerate(paths) if i not in decoded}


def _decode_error(path: str) -> str:
    """The reason one file fails to decode, from TensorFlow's error, in a line."""
    try:
        tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except tf.errors.OpError as e:
        return e.message.strip().splitlines()[0]
    return "it decodes when read alone"


def load_folder(config: ml_collections.ConfigDict) -> Loaded:
    data = config.data
    bad = BadExamples(config.on_bad_example)
    train, class_names = read_image_folder("train_dir", data.train_dir, bad)
    given = {
        split: read_image_folder(f"{split}_dir", data[f"{split}_dir"], bad, class_names)[0]
        for split in ("validation", "test")
        if data[f"{split}_dir"]
    }
    splits = complete_splits(train, given, data, config.seed)
    description = f"config.data.train_dir={data.train_dir!r}"
    return Loaded(splits, class_names, PHOTOS, files=True, description=description, bad_examples=bad)


def load_digits(config: ml_collections.ConfigDict) -> Loaded:
    """scikit-learn's 1797 handwritten digits: 8x8 pixels in 0..16 -> [0, 1]."""
    try:
        from sklearn import datasets
    except ImportError as e:
        raise ImportError("config.data.source='digits' needs scikit-learn: pip install scikit-learn.") from e
    digits = datasets.load_digits()
    train = Examples((digits.images / 16.0).astype(np.float32)[..., None], digits.target.astype(np.int32))
    splits = complete_splits(train, {}, config.data, config.seed)
    return Loaded(splits, [str(i) for i in range(10)], DIGITS, files=False, description="scikit-learn digits")


def read_arrays(data: ml_collections.ConfigDict) -> tuple[dict[str, np.ndarray], str]:
    """The arrays of config.data.arrays_path (.npz) or config.data.arrays_name (registered), and which."""
    if bool(data.arrays_path) == bool(data.arrays_name):
        raise ValueError(
            "config.data.source='arrays' needs exactly one of config.data.arrays_path (an .npz file) and "
            "config.data.arrays_name (a name given to register_arrays()); got "
            f"arrays_path={data.arrays_path!r}, arrays_name={data.arrays_name!r}."
        )
    if data.arrays_name:
        name = data.arrays_name
        if name not in _REGISTERED_ARRAYS:
            raise ValueError(
                f"config.data.arrays_name={name!r} is not registered (registered: "
                f"{sorted(_REGISTERED_ARRAYS)}). Call input_pipeline.image_classification.register_arrays("
                f"{name!r}, x_train, y_train, ...) first."
            )
        return dict(_REGISTERED_ARRAYS[name]), f"config.data.arrays_name={name!r}"
    if not tf.io.gfile.exists(data.arrays_path):
        raise FileNotFoundError(
            f"config.data.arrays_path={data.arrays_path!r} does not exist. Set it to an .npz file with "
            "x_train, y_train [, x_val, y_val, x_test, y_test]."
        )
    with tf.io.gfile.GFile(data.arrays_path, "rb") as f, np.load(io.BytesIO(f.read())) as npz:
        return dict(npz), f"config.data.arrays_path={data.arrays_path!r}"


def array_examples(arrays: dict[str, np.ndarray], split: str, where: str) -> Examples | None:
    """x_<suffix>, y_<suffix> -> checked Examples with images [N, H, W, C]; None when both are absent."""
    x_key, y_key = f"x_{_ARRAY_SUFFIXES[split]}", f"y_{_ARRAY_SUFFIXES[split]}"
    if x_key not in arrays and y_key not in arrays:
        return None
    if x_key not in arrays or y_key not in arrays:
        raise ValueError(f"{where} has only one of {x_key} and {y_key}: give both or neither.")
    x, y = arrays[x_key], arrays[y_key]
    x = x[..., None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"{where}: {x_key} has shape {x.shape}; give [N, H, W] or [N, H, W, C] with C 1 or 3."
        )
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{where}: {y_key} must be {len(x)} integer labels (one per image); got {y.dtype} {y.shape}."
        )
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"{where}: {x_key} is float outside [0, 1]; give floats in [0, 1] or uint8 in [0, 255]."
            )
    return Examples(x, y.astype(np.int32))


def load_arrays(config: ml_collections.ConfigDict) -> Loaded:
    arrays, where = read_arrays(config.data)
    train = array_examples(arrays, "train", where)
    if train is None or not len(train):
        raise ValueError(
            f"{where} has no (or an empty) x_train; keys: {sorted(arrays)}. Give x_train and y_train."
        )
    given = {split: array_examples(arrays, split, where) for split in ("validation", "test")}
    given = {split: examples for split, examples in given.items() if examples is not None}
    splits = complete_splits(train, given, config.data, config.seed)
    class_names = array_class_names(arrays, splits, where)
    defaults = Defaults(train.items.shape[-1], (0.5,), (0.5,), photos=False)
    description = (
        f"{where}; classes: {'its class_names' if 'class_names' in arrays else 'the largest label + 1'}"
    )
    return Loaded(splits, class_names, defaults, False, description)


def array_class_names(arrays: dict[str, np.ndarray], splits: dict[str, Examples], where: str) -> list[str]:
    """The arrays' class_names, else "0", "1", ... up to the largest label; checks every label."""
    if "class_names" in arrays:
        names = [str(name) for name in arrays["class_names"]]
    else:
        names = [str(i) for i in range(1 + max(int(e.labels.max(initial=0)) for e in splits.values()))]
    for split, examples in splits.items():
        if len(examples) and (examples.labels.min() < 0 or examples.labels.max() >= len(names)):
            raise ValueError(f"{where}: the {split} labels must lie in [0, {len(names)}) (the class count).")
    return names


class MemorySource:
    """Splits held in memory; this host's share of each, as tf.data of (item, label[, index])."""

    def __init__(self, loaded: Loaded, seed: int, process_index: int, process_count: int, host_batch_size: int):
        self.class_names, self.defaults = loaded.class_names, loaded.defaults
        self.description = loaded.description
        bad = loaded.bad_examples
        self.skipped_examples: dict[str, int] = bad.counts() if bad else {}
        if bad and process_index == 0:
            bad.log_summary()
        self._files = loaded.files
        self._sizes = {split: len(examples) for split, examples in loaded.splits.items()}
        self._items = {split: tf.constant(e.items) for split, e in loaded.splits.items()}
        self._labels = {split: tf.constant(e.labels) for split, e in loaded.splits.items()}
        self._seed = seed
        self._process_index, self._process_count = process_index, process_count
        self._host_batch_size = host_batch_size

    def has_split(self, split: str) -> bool:
        return split in self._sizes

    def host_counts(self, split: str) -> list[int]:
        return host_counts(self._sizes[split], self._process_count)

    def train_epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        indices = tf.numpy_function(self._host_permutation, [epoch], tf.int64, stateful=False)
        ds = tf.data.Dataset.from_tensor_slices(tf.ensure_shape(indices, [None]))
        return ds.map(lambda i: (tf.gather(self._items["train"], i), tf.gather(self._labels["train"], i), i))

    def _host_permutation(self, epoch: np.int64) -> np.ndarray:
        return host_epoch_order(self._seed, int(epoch), self._sizes["train"], self._process_index,
                                self._process_count, self._host_batch_size)

    def eval_examples(self, split: str) -> tf.data.Dataset:
        ds = tf.data.Dataset.range(self._process_index, self._sizes[split], self._process_count)
        return ds.map(lambda i: (tf.gather(self._items[split], i), tf.gather(self._labels[split], i)))

    def to_image(self, item: tf.Tensor, channels: int) -> tf.Tensor:
        if self._files:
            contents = tf.io.read_file(item)
            return tf.io.decode_image(contents, channels=channels, dtype=tf.float32, expand_animations=False)
        return augment.set_channels(augment.to_unit_float(item), channels)


# ----------------------------------------------------------------------------------------------------
# TFDS.


class TfdsSource:
    """A TFDS dataset: fixed per-host slices from `tfds.even_splits`, images decoded after shuffling."""

    def __init__(self, config: ml_collections.ConfigDict, process_index: int, process_count: int):
        data = config.data
        self._spec = TFDS_DATASETS[data.tfds_name]
        builder = _prepared_builder(data, self._spec)
        self.class_names = list(builder.info.features[self._spec.label_key].names)
        self.defaults, self.description = self._spec.defaults, f"TFDS {data.tfds_name!r}"
        self.skipped_examples: dict[str, int] = {}  # TFDS images are not checked one by one.
        self._seed, self._shuffle_buffer = config.seed, data.shuffle_buffer
        self._examples, self._counts = {}, {}
        for split, default in zip(SPLITS, self._spec.splits, strict=True):
            value = data[f"{split}_split"]
            tfds_split = default if value == "auto" else value
            if tfds_split:
                shown = f" ({tfds_split!r})" if value == "auto" else ""
                key = f"config.data.{split}_split={value!r}{shown}"
                self._load_split(builder, split, tfds_split, key, process_index, process_count)

    def _load_split(
        self,
        builder: tfds.core.DatasetBuilder,
        split: str,
        tfds_split: str,
        key: str,
        process_index: int,
        process_count: int,
    ) -> None:
        """Builds this host's dataset of the split (once) and counts every host's examples."""
        decoders = tfds.decode.PartialDecoding(
            {self._spec.image_key: True, self._spec.label_key: True},
            decoders={self._spec.image_key: tfds.decode.SkipDecoding()},
        )
        host_splits = tfds.even_splits(tfds_split, n=process_count)
        try:
            ds = builder.as_dataset(split=host_splits[process_index], decoders=decoders, shuffle_files=False)
            self._counts[split] = _split_sizes(builder, host_splits, ds, process_index)
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"{key} is not a valid split of {builder.name} (splits: {list(builder.info.splits)}): {e}"
            ) from e
        offset = sum(self._counts[split][:process_index])
        image_key, label_key = self._spec.image_key, self._spec.label_key
        self._examples[split] = ds.enumerate(start=offset).map(
            lambda i, ex: (ex[image_key], tf.cast(ex[label_key], tf.int32), i)
        )

    def has_split(self, split: str) -> bool:
        return split in self._counts

    def host_counts(self, split: str) -> list[int]:
        return self._counts[split]

    def train_epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        seed = tf.ensure_shape(tf.numpy_function(self._shuffle_seed, [epoch], tf.int64, stateful=False), [])
        ds = self._examples["train"]
        if self._shuffle_buffer > 1:
            ds = ds.shuffle(self._shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        return ds

    def _shuffle_seed(self, epoch: np.int64) -> np.int64:
        return np.int64(epoch_seed(self._seed, int(epoch)).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def eval_examples(self, split: str) -> tf.data.Dataset:
        return self._examples[split].map(lambda encoded, label, index: (encoded, label))

    def to_image(self, encoded: tf.Tensor, channels: int) -> tf.Tensor:
        return tf.io.decode_image(encoded, channels=channels, dtype=tf.float32, expand_animations=False)


def _split_sizes(
    builder: tfds.core.DatasetBuilder, host_splits: list, ds: tf.data.Dataset, process_index: int
) -> list[int]:
    """Examples in each host's split: from the metadata; without it (mock data), the datasets' cardinality."""
    if builder.info.splits:
        return [builder.info.splits[s].num_examples for s in host_splits]
    datasets = [ds if i == process_index else builder.as_dataset(split=s) for i, s in enumerate(host_splits)]
    return [int(d.cardinality()) for d in datasets]


def _prepared_builder(data: ml_collections.ConfigDict, spec: TfdsDataset) -> tfds.core.DatasetBuilder:
    builder = tfds.builder(data.tfds_name, data_dir=data.tfds_data_dir or None)
    if builder.is_prepared():
        return builder
    if spec.manual_download:
        _check_manual_dir(data, builder.data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=data.tfds_manual_dir or None)
    builder.download_and_prepare(download_config=download_config)
    return builder


def _check_manual_dir(data: ml_collections.ConfigDict, data_dir: str) -> None:
    manual_dir = data.tfds_manual_dir
    missing = [
        f for f in IMAGENET_MANUAL_FILES if not manual_dir or not tf.io.gfile.exists(f"{manual_dir}/{f}")
    ]
    if missing:
        raise ValueError(
            f"config.data.tfds_name={data.tfds_name!r} is not prepared in {data_dir} and TFDS cannot "
            "download it: it needs your manual download dir, "
            f"config.data.tfds_manual_dir={manual_dir!r}, which lacks {missing}. Get "
            f"{' and '.join(IMAGENET_MANUAL_FILES)} from https://image-net.org/download-images (free "
            "registration), put them in one folder and set config.data.tfds_manual_dir to it; or set "
            "config.data.tfds_data_dir to where imagenet2012 is already prepared."
        )


# ----------------------------------------------------------------------------------------------------
# Config checks.


def check_config(config: ml_collections.ConfigDict, process_count: int) -> None:
    """Checks of the config alone, before any data is read."""
    check_batch_sizes(config, process_count)
    check_on_bad_example(config.on_bad_example)
    data = config.data
    if data.source not in SOURCES:
        raise ValueError(f"config.data.source={data.source!r}: use one of {SOURCES}.")
    if data.source == "tfds" and data.tfds_name not in TFDS_DATASETS:
        raise ValueError(
            f"config.data.tfds_name={data.tfds_name!r} is not a known image dataset; known: "
            f"{sorted(TFDS_DATASETS)}. For your own images use config.data.source='folder' or 'arrays'."
        )
    _check_image_keys(data)
    fractions = {key: data[key] for key in ("validation_fraction", "test_fraction")}
    if any(not 0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise ValueError(
            f"config.data fractions {fractions} must each be in [0, 1) and sum to less than 1: the rest "
            "is train."
        )


def _check_image_keys(data: ml_collections.ConfigDict) -> None:
    size = data.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(
            f"config.data.image_size={size!r} must be a positive integer: the side of the model's square "
            "input, e.g. 32 (CIFAR) or 224 (ImageNet)."
        )
    if data.channels not in (0, 1, 3):
        raise ValueError(
            f"config.data.channels={data.channels!r}: use 1 (grayscale), 3 (RGB) or 0 (the data's own)."
        )
    if data.augmentation not in AUGMENTATIONS:
        raise ValueError(f"config.data.augmentation={data.augmentation!r}: use one of {AUGMENTATIONS}.")
    if data.pad < 0 or data.mixup_alpha < 0:
        raise ValueError(
            f"config.data.pad={data.pad} and config.data.mixup_alpha={data.mixup_alpha} must be >= 0 "
            "(mixup_alpha 0 turns mixup off)."
        )
    if data.eval_resize not in (-1, 0) and data.eval_resize < size:
        raise ValueError(
            f"config.data.eval_resize={data.eval_resize} is smaller than config.data.image_size={size}: "
            f"the centre crop would not fit. Use >= {size}, 0 (resize to image_size) or -1 (the dataset's "
            "default)."
        )


def _check_num_classes(config: ml_collections.ConfigDict, num_classes: int, description: str) -> None:
    if config.model.num_classes != num_classes:
        raise ValueError(
            f"config.model.num_classes={config.model.num_classes} but the data ({description}) has "
            f"{num_classes} classes; set config.model.num_classes={num_classes}."
        )


def resolve_normalization(
    data: ml_collections.ConfigDict, defaults: Defaults, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """config.data.mean/std, else the dataset's; one value is repeated over channels."""
    resolved = []
    for key, default in (("mean", defaults.mean), ("std", defaults.std)):
        values = tuple(float(v) for v in data[key])
        if values and len(values) not in (1, channels):
            raise ValueError(
                f"config.data.{key}={data[key]} has {len(values)} values for {channels} channel(s); give "
                f"{channels} values, one, or () for the dataset's default."
            )
        if not values:  # A colour dataset read as grayscale: the channels' average.
            values = default if len(default) in (1, channels) else (sum(default) / len(default),)
        resolved.append(values * channels if len(values) == 1 else values)
    if min(resolved[1]) <= 0:
        raise ValueError(f"config.data.std={data.std} must be positive.")
    return resolved[0], resolved[1]


def load_source(config: ml_collections.ConfigDict, process_index: int, process_count: int):
    """The source named by config.data.source, read and checked."""
    if config.data.source == "tfds":
        return TfdsSource(config, process_index, process_count)
    loaders = {"folder": load_folder, "digits": load_digits, "arrays": load_arrays}
    host_batch_size = config.global_batch_size // process_count
    return MemorySource(loaders[config.data.source](config), config.seed, process_index, process_count, host_batch_size)


# ----------------------------------------------------------------------------------------------------
# The pipeline.


class ImageClassificationData:
    """Image classification batches for this host; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
        check_config(config, process_count)
        data = config.data
        self._source = load_source(config, process_index, process_count)
        self.class_names: list[str] = list(self._source.class_names)
        self.num_classes: int = len(self.class_names)
        # Examples left out under config.on_bad_example='skip', by the config key they were read under.
        self.skipped_examples: dict[str, int] = self._source.skipped_examples
        _check_num_classes(config, self.num_classes, self._source.description)
        defaults = self._source.defaults
        self.image_size: int = data.image_size
        self.channels: int = data.channels or defaults.channels
        self.image_shape: tuple[int, int, int] = (self.image_size, self.image_size, self.channels)
        self._mean, self._std = resolve_normalization(data, defaults, self.channels)
        self.eval_resize: int = (
            data.eval_resize if data.eval_resize >= 0 else self._default_eval_resize(defaults)
        )
        self._augmentation, self._pad, self._flip = data.augmentation, data.pad, data.flip
        # Self-supervised pretraining (SimCLR): two augmented views of each image, colour-distorted.
        self._views, self._color = data.get("views", 1), float(data.get("color_distortion", 0.0))
        if self._views not in (1, 2) or (self._color > 0 and self.channels != 3):
            raise ValueError(
                f"config.data.views={self._views} must be 1 or 2, and config.data.color_distortion="
                f"{self._color} needs RGB images (config.data.channels=3, is {self.channels})."
            )
        self._mixup_alpha = float(data.mixup_alpha)
        self._augment_seed = tf.constant([config.seed, AUGMENT_STREAM], tf.int64)
        self._mixup_seed = tf.constant([config.seed, MIXUP_STREAM], tf.int64)
        self._process_index = process_index
        self.train_batch_size: int = config.global_batch_size // process_count
        self.eval_batch_size: int = config.eval_batch_size // process_count
        self.num_train_examples: int = self.num_examples("train")
        self.steps_per_epoch: int = steps_per_epoch(
            self._source.host_counts("train"), self.train_batch_size, config.global_batch_size
        )
        self._check_eval_splits()

    def _default_eval_resize(self, defaults: Defaults) -> int:
        return round(self.image_size / 0.875) if defaults.photos else 0

    def _check_eval_splits(self) -> None:
        for split in SPLITS[1:]:
            if self._source.has_split(split) and self.num_examples(split) == 0:
                raise ValueError(
                    f"The {split} split is empty: check config.data.{split}_split, config.data.{split}_dir "
                    f"or config.data.{split}_fraction (too small for the data?)."
                )

    def num_examples(self, split: str) -> int:
        """Examples of the split over all hosts; 0 for a split the config does not define."""
        self._check_split_name(split)
        return sum(self._source.host_counts(split)) if self._source.has_split(split) else 0

    def train_iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Infinite per-host training batches; `start_step=k` yields what `start_step=0` does from batch k."""
        epoch, step = divmod(start_step, self.steps_per_epoch)
        per_epoch = self.steps_per_epoch * self.train_batch_size

        def epoch_examples(e: tf.Tensor) -> tf.data.Dataset:
            return self._source.train_epoch(e).take(per_epoch).map(lambda item, label, i: (item, label, e, i))

        ds = tf.data.Dataset.counter(epoch).flat_map(epoch_examples).skip(step * self.train_batch_size)
        ds = ds.map(self._train_example, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(self.train_batch_size, drop_remainder=True).map(self._train_batch)
        return numpy_batches(ds)

    def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Per-host batches of the split once, padded with weight-0 examples; the same count on every host."""
        self._check_split_name(split)
        if not self._source.has_split(split):
            raise ValueError(
                f"The config defines no {split} split: set config.data.{split}_split (TFDS), or "
                f"config.data.{split}_dir or config.data.{split}_fraction > 0 (folder, digits, arrays)."
            )
        counts = self._source.host_counts(split)
        batch_size = self.eval_batch_size
        num_padding = eval_padding(counts, self._process_index, batch_size)
        padding = {"image": tf.zeros(self.image_shape), "label": tf.constant(0), "weight": tf.constant(0.0)}
        if self._views == 2:  # Two views with seeds fixed by the example's place: every evaluation sees the same.
            real = self._source.eval_examples(split).enumerate().map(self._eval_views,
                                                                     num_parallel_calls=tf.data.AUTOTUNE)
            padding["image_view2"] = padding["image"]
        else:
            real = self._source.eval_examples(split).map(self._eval_example, num_parallel_calls=tf.data.AUTOTUNE)
        ds = real.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
        return numpy_batches(ds.batch(batch_size, drop_remainder=True))

    def preprocess_eval(self, image: tf.Tensor) -> tf.Tensor:
        """A decoded image [H, W, C] (uint8, or float in [0, 1]) -> the normalised model input.

        For prediction and serving: the same resizing, channels and normalisation as `eval_batches`.
        """
        image = augment.set_channels(augment.to_unit_float(image), self.channels)
        return self._normalize(self._resize(image))

    def _resize(self, image: tf.Tensor) -> tf.Tensor:
        """Deterministic resizing to image_size (shorter side to eval_resize, centre crop; or straight)."""
        if self.eval_resize > 0:
            return augment.resize_shorter_and_centre_crop(image, self.eval_resize, self.image_size)
        return augment.resize(image, self.image_size)

    def _augment(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """The configured augmentation of a [0, 1] image with a stateless seed ([2] ints); stays in [0, 1]."""
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if self._augmentation == "inception_crop":
            image = augment.inception_crop(image, crop_seed, self.image_size)
        else:
            image = self._resize(image)
            if self._augmentation == "pad_crop":
                image = augment.pad_crop(image, crop_seed, self._pad)
        if self._flip:
            image = augment.random_flip(image, flip_seed)
        if self._color > 0:
            image = augment.color_distortion(image, tf.random.experimental.stateless_fold_in(seed, 2), self._color)
        return image

    def _augmented_views(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """The augmented, normalised "image"; with data.views=2 also "image_view2", from a seed folded out of `seed`."""
        views = {"image": self._normalize(self._augment(image, seed))}
        if self._views == 2:
            second = self._augment(image, tf.random.experimental.stateless_fold_in(seed, 1))
            views["image_view2"] = self._normalize(second)
        return views

    def _train_example(self, item, label, epoch, index) -> dict[str, tf.Tensor]:
        image = self._source.to_image(item, self.channels)
        seed = augment.example_seed(self._augment_seed, epoch, index)
        example = {**self._augmented_views(image, seed), "label": label}
        if self._mixup_alpha > 0:
            example["mixup_seed"] = augment.example_seed(self._mixup_seed, epoch, index)
        return example

    def _train_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if self._mixup_alpha <= 0:
            return batch
        seed = batch.pop("mixup_seed")[0]  # The batch's first example: unique within the epoch.
        images, label_probs = augment.mixup(
            batch["image"], batch["label"], seed, self._mixup_alpha, self.num_classes
        )
        return {"image": images, "label": batch["label"], "label_probs": label_probs}

    def _eval_example(self, item, label) -> dict[str, tf.Tensor]:
        image = self._resize(self._source.to_image(item, self.channels))
        return {"image": self._normalize(image), "label": label, "weight": tf.constant(1.0)}

    def _eval_views(self, index, item_and_label) -> dict[str, tf.Tensor]:
        item, label = item_and_label
        image = self._source.to_image(item, self.channels)
        seed = augment.example_seed(self._augment_seed, -1, index)  # Epoch -1: never a training epoch.
        return {**self._augmented_views(image, seed), "label": label, "weight": tf.constant(1.0)}

    def _normalize(self, image: tf.Tensor) -> tf.Tensor:
        return tf.ensure_shape(augment.normalize(image, self._mean, self._std), self.image_shape)

    @staticmethod
    def _check_split_name(split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
