"""Image inputs for predict, serve and export: encoded bytes -> evaluation's model input, and where bytes come from.

`ImagePreprocess` applies the training run's evaluation preprocessing (`input_pipeline.image_eval.EvalImages`,
recorded in the workdir) to encoded JPEG/PNG bytes: in a graph for the SavedModel, batched for predict, one image
at a time for the server (where a request's images are decoded in its own thread, before it joins a batch, so an
image that does not decode fails its request alone). `read_inputs` lists the images of `config.serving.input_files`
(folders, files, globs) and applies `config.on_bad_example` to those that do not decode, as training does.
"""

import base64
import binascii
import logging
import os

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline.image_eval import EvalImages
from input_pipeline.sources.folder import IMAGE_EXTENSIONS  # What training reads: fed-back images must be these.
from lm.serving.server import BadInstance

log = logging.getLogger(__name__)

_MAGIC = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg"}


class ImagePreprocess:
    """Encoded images -> {input_key: normalised pixels}: the same TensorFlow ops as the run's evaluation.

    `input_key` is the model family's image input (`ModelFamily.input_keys[0]`)."""

    def __init__(self, eval_images: EvalImages, input_key: str):
        self.eval_images = eval_images
        self.input_key = input_key
        self._batch = tf.function(eval_images.batch_from_bytes, input_signature=[tf.TensorSpec([None], tf.string)])
        self._one = tf.function(eval_images.from_bytes, input_signature=[tf.TensorSpec([], tf.string)])

    def __call__(self, contents: tf.Tensor) -> dict[str, tf.Tensor]:
        """[batch] encoded images (a tf.string tensor) -> {key: [batch, S, S, C]}; traceable into a SavedModel."""
        return {self.input_key: self.eval_images.batch_from_bytes(contents)}

    def encode(self, contents: list[bytes]) -> dict[str, np.ndarray]:
        """A list of encoded images -> {key: numpy [n, S, S, C]}."""
        return {self.input_key: self._batch(tf.constant(contents, tf.string, shape=[len(contents)])).numpy()}

    def one(self, contents: bytes) -> np.ndarray:
        """One encoded image -> [S, S, C]; raises BadInstance when it does not decode."""
        try:
            return self._one(tf.constant(contents, tf.string)).numpy()
        except tf.errors.OpError as e:
            raise BadInstance(f"the image does not decode ({e.message.strip().splitlines()[0]}).") from None

    def blank_png(self) -> bytes:
        """A black PNG of the input size: the warm-up request of the server and of TF Serving."""
        return tf.io.encode_png(tf.zeros(self.eval_images.shape, tf.uint8)).numpy()


def instance_bytes(instance: object) -> bytes:
    """A REST instance `{"b64": ...}` (TF Serving's form for binary data) or `{"image": {"b64": ...}}` (also under
    "image_bytes", the SavedModel's input name) -> JPEG or PNG bytes; raises BadInstance otherwise."""
    if isinstance(instance, dict) and "b64" not in instance:
        present = [key for key in ("image", "image_bytes") if key in instance]
        if not present:
            raise BadInstance('an image instance is {"b64": "<base64 JPEG or PNG>"} or {"image": {"b64": ...}}.')
        instance = instance[present[0]]
    if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
        raise BadInstance('an image instance is {"b64": "<base64 JPEG or PNG>"} or {"image": {"b64": ...}}.')
    try:
        contents = base64.b64decode(instance["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadInstance(f"the b64 field is not valid base64 ({e}).") from None
    extension(contents)
    return contents


def extension(contents: bytes) -> str:
    """".png" or ".jpg" from the file's first bytes; raises BadInstance for anything else."""
    for magic, suffix in _MAGIC.items():
        if contents.startswith(magic):
            return suffix
    raise BadInstance("the image is neither JPEG nor PNG.")


def list_images(value: str) -> list[str]:
    """Comma-separated folders (every JPEG/PNG under them, sorted by path), image files or globs -> paths, in order."""
    paths = []
    for entry in [p.strip() for p in value.split(",") if p.strip()]:
        if tf.io.gfile.isdir(entry):
            found = sorted(os.path.join(root, name) for root, _, names in tf.io.gfile.walk(entry) for name in names
                           if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"config.serving.input_files: the folder {entry!r} holds no JPEG or PNG image.")
            paths.extend(found)
            continue
        matches = sorted(tf.io.gfile.glob(entry))
        if not matches:
            raise FileNotFoundError(f"config.serving.input_files: {entry!r} matches no file or folder.")
        unknown = [m for m in matches if not m.lower().endswith(IMAGE_EXTENSIONS)]
        if unknown:
            raise ValueError(f"config.serving.input_files: {unknown[0]!r} is not a JPEG or PNG file "
                             f"({', '.join(IMAGE_EXTENSIONS)}).")
        paths.extend(matches)
    return paths


def read_inputs(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """(id, path) of every image of config.serving.input_files, the id being the path (made absolute:
    lm.files.absolute_path); an image that does not decode follows config.on_bad_example (stops the run
    naming the file, or is skipped and counted)."""
    from input_pipeline.common import BadExamples
    from input_pipeline.sources import folder
    from lm import files

    if not config.serving.input_files:
        raise ValueError("--mode=predict and --mode=select on an image model need config.serving.input_files "
                         "(comma-separated image folders, JPEG/PNG files or globs).")
    paths = [files.absolute_path(path) for path in list_images(config.serving.input_files)]
    broken = folder.undecodable_images(paths)  # Training's check: one parallel decoding pass.
    bad = BadExamples(config.on_bad_example)
    for path in paths:
        if path in broken:
            bad.report("serving.input_files", path, f"{path}: the image does not decode ({broken[path]}).")
    bad.log_summary()
    rows = [(path, path) for path in paths if path not in broken]
    if not rows:
        raise ValueError(f"config.serving.input_files={config.serving.input_files!r} holds no image that decodes.")
    return rows
