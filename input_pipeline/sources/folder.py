"""config.data.source='folder': one sub-folder of JPEG/PNG images per class (any path tf.io.gfile lists).

`config.data.train_dir` holds the class folders (sorted names give the class ids); `validation_dir`/`test_dir`
likewise (their classes must be train's), else the core carves those splits out of train. Images are held as
file paths and decoded in tf.data. Every image is decoded once when the folder is listed (one parallel tf.data
pass over all cores; about one epoch of decoding, per host): one that does not decode follows
config.on_bad_example ('error' names the file and TensorFlow's reason; 'skip' leaves it out and counts it).
"""

import numpy as np
import tensorflow as tf

from input_pipeline.augment import PHOTOS
from input_pipeline.common import BadExamples
from input_pipeline.registry import register_source
from input_pipeline.source import Columns, InMemory, Request

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@register_source("folder", fields=[("image", "label")])
def load(request: Request) -> InMemory:
    data = request.config.data
    train, class_names = read_image_folder("train_dir", data.train_dir, request.bad)
    splits = {"train": train}
    for split in request.splits[1:]:
        if data[f"{split}_dir"]:
            splits[split] = read_image_folder(f"{split}_dir", data[f"{split}_dir"], request.bad, class_names)[0]
    return InMemory(description=f"config.data.train_dir={data.train_dir!r}", class_names=class_names,
                    info={"image_format": "path", "image_defaults": PHOTOS}, splits=splits)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_image_folder(key: str, path: str, bad: BadExamples, class_names: list[str] | None = None
                      ) -> tuple[Columns, list[str]]:
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
    classes = [entry for entry in entries if tf.io.gfile.isdir(_join(path, entry))]
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
        files = sorted(f for f in tf.io.gfile.listdir(_join(path, name)) if _is_image(f))
        if not files:
            raise _empty_class_error(key, path, name, "JPEG or PNG image")
        listed[name] = [_join(_join(path, name), f) for f in files]
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
    return {"image": np.array(paths), "label": np.array(labels, np.int32)}, class_names or classes


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
