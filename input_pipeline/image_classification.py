"""Image classification input: examples ("image", "label") from any registered source -> augmented host batches.

`ImageClassificationData(config, process_index, process_count)` (pipeline "images") checks the image keys
of `config.data` (configs/vision_data.py) and reads the source (TFDS, an image folder, scikit-learn digits,
arrays, or one a user registers) through the shared core (`input_pipeline.core`: splits, per-host slices,
epoch order, resume, padded evaluation, bad examples), then serves:

- `train_iterator(start_step)`: 'image' float32 [b, S, S, C] (S = image_size), normalised per channel;
  'label' int32 [b]; with mixup also 'label_probs' float32 [b, num_classes]; with data.views=2 also
  'image_view2'. Augmentation is stateless: example i of the training split is augmented in epoch e with a
  seed derived from (config.seed, e, i), and a batch is mixed with a seed from (config.seed, e, its first
  example), so resumed batches equal the uninterrupted ones bit for bit.
- `eval_batches(split)`: deterministic preprocessing (resize, or resize the shorter side and crop the
  centre) with a 'weight' (1 real, 0 padding).

A source says how its "image" values are stored (`info["image_format"]`: "pixels" arrays, "path" of a file,
"encoded" bytes; pixels by default) and may give the dataset's channels and normalisation
(`info["image_defaults"]`); it names its classes (`class_names`), else the labels' range decides.
"""

import ml_collections
import tensorflow as tf

from input_pipeline import augment
from input_pipeline.common import AUGMENT_STREAM, MIXUP_STREAM
from input_pipeline.core import Pipeline
from input_pipeline.image_eval import EvalImages
from input_pipeline.registry import register_pipeline
from input_pipeline.source import InMemory, Streamed

AUGMENTATIONS = ("none", "pad_crop", "inception_crop")
GENERIC = augment.Defaults(0, (0.5,), (0.5,), photos=False)  # A source that gives no defaults.


class ImageClassificationData(Pipeline):
    """Image classification batches for this host; see the module docstring."""

    FIELDS = ("image", "label")

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        data = config.data
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
                f"config.data.eval_resize={data.eval_resize} is smaller than config.data.image_size={size}: the "
                f"centre crop would not fit. Use >= {size}, 0 (resize to image_size) or -1 (the dataset's default)."
            )
        if data.views not in (1, 2):
            raise ValueError(f"config.data.views={data.views} must be 1 or 2.")

    def loaded(self, config: ml_collections.ConfigDict, loaded: InMemory | Streamed) -> None:
        data = config.data
        self.class_names: list[str] = list(loaded.class_names or [str(i) for i in range(config.model.num_classes)])
        self.num_classes: int = len(self.class_names)
        if config.model.num_classes != self.num_classes:
            raise ValueError(
                f"config.model.num_classes={config.model.num_classes} but the data ({loaded.description}) has "
                f"{self.num_classes} classes; set config.model.num_classes={self.num_classes}."
            )
        self._format = loaded.info.get("image_format", "pixels")
        defaults = loaded.info.get("image_defaults", GENERIC)
        self.image_size: int = data.image_size
        self.channels: int = data.channels or defaults.channels or 3
        self.image_shape: tuple[int, int, int] = (self.image_size, self.image_size, self.channels)
        self._mean, self._std = resolve_normalization(data, defaults, self.channels)
        photos_resize = round(self.image_size / 0.875) if defaults.photos else 0
        self.eval_resize: int = data.eval_resize if data.eval_resize >= 0 else photos_resize
        # Evaluation's preprocessing, resolved: shared with predict, serve and the SavedModel (serving_facts).
        self.eval_images = EvalImages(self.image_size, self.channels, self._mean, self._std, self.eval_resize)
        self._augmentation, self._pad, self._flip = data.augmentation, data.pad, data.flip
        # Self-supervised pretraining (SimCLR): two augmented views of each image, colour-distorted.
        self._views, self._color = data.views, float(data.color_distortion)
        if self._color > 0 and self.channels != 3:
            raise ValueError(
                f"config.data.color_distortion={self._color} needs RGB images (config.data.channels=3, is "
                f"{self.channels})."
            )
        self._mixup_alpha = float(data.mixup_alpha)
        self._augment_seed = tf.constant([config.seed, AUGMENT_STREAM], tf.int64)
        self._mixup_seed = tf.constant([config.seed, MIXUP_STREAM], tf.int64)

    # Training. ------------------------------------------------------------------------------------------

    def train_examples(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.map(self._train_example, num_parallel_calls=tf.data.AUTOTUNE)

    def _train_example(self, example: dict) -> dict[str, tf.Tensor]:
        image = self._to_image(example["image"])
        seed = augment.example_seed(self._augment_seed, example["epoch"], example["index"])
        out = {**self._augmented_views(image, seed), "label": tf.cast(example["label"], tf.int32)}
        if self._mixup_alpha > 0:
            out["mixup_seed"] = augment.example_seed(self._mixup_seed, example["epoch"], example["index"])
        return out

    def train_batches(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.map(self._train_batch)

    def _train_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if self._mixup_alpha <= 0:
            return batch
        seed = batch.pop("mixup_seed")[0]  # The batch's first example: unique within the epoch.
        images, label_probs = augment.mixup(batch["image"], batch["label"], seed, self._mixup_alpha, self.num_classes)
        return {"image": images, "label": batch["label"], "label_probs": label_probs}

    # Evaluation. ----------------------------------------------------------------------------------------

    def eval_examples(self, split: str) -> tf.data.Dataset:
        examples = self.examples.host_examples(split)
        if self._views == 2:  # Two views with seeds fixed by the example's place: every evaluation sees the same.
            return examples.enumerate().map(self._eval_views, num_parallel_calls=tf.data.AUTOTUNE)
        return examples.map(self._eval_example, num_parallel_calls=tf.data.AUTOTUNE)

    def eval_padding(self) -> dict[str, tf.Tensor]:
        padding = {"image": tf.zeros(self.image_shape), "label": tf.constant(0), "weight": tf.constant(0.0)}
        return {**padding, "image_view2": padding["image"]} if self._views == 2 else padding

    def _eval_example(self, example: dict) -> dict[str, tf.Tensor]:
        image = self._resize(self._to_image(example["image"]))
        label = tf.cast(example["label"], tf.int32)
        return {"image": self._normalize(image), "label": label, "weight": tf.constant(1.0)}

    def _eval_views(self, index: tf.Tensor, example: dict) -> dict[str, tf.Tensor]:
        seed = augment.example_seed(self._augment_seed, -1, index)  # Epoch -1: never a training epoch.
        views = self._augmented_views(self._to_image(example["image"]), seed)
        return {**views, "label": tf.cast(example["label"], tf.int32), "weight": tf.constant(1.0)}

    def preprocess_eval(self, image: tf.Tensor) -> tf.Tensor:
        """A decoded image [H, W, C] (uint8, or float in [0, 1]) -> the normalised model input.

        For prediction and serving: the same resizing, channels and normalisation as `eval_batches`.
        """
        image = augment.set_channels(augment.to_unit_float(image), self.channels)
        return self._normalize(self._resize(image))

    # Image ops. -----------------------------------------------------------------------------------------

    def decode_image(self, value: tf.Tensor) -> tf.Tensor:
        """A source's stored image (pixels, a path or encoded bytes) -> float32 [H, W, channels] in [0, 1]."""
        return self._to_image(value)

    def _to_image(self, value: tf.Tensor) -> tf.Tensor:
        """The source's stored image -> float32 [H, W, channels] in [0, 1]."""
        if self._format == "pixels":
            return augment.set_channels(augment.to_unit_float(value), self.channels)
        contents = tf.io.read_file(value) if self._format == "path" else value
        return self.eval_images.decode(contents)

    def _resize(self, image: tf.Tensor) -> tf.Tensor:
        """Deterministic resizing to image_size (shorter side to eval_resize, centre crop; or straight)."""
        return self.eval_images.resize(image)

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

    def _normalize(self, image: tf.Tensor) -> tf.Tensor:
        return self.eval_images.normalize(image)

    def serving_facts(self) -> dict:
        """What serving needs besides the weights: the class names and evaluation's preprocessing."""
        return {"label_names": list(self.class_names), "eval_images": self.eval_images.to_json()}


def resolve_normalization(data: ml_collections.ConfigDict, defaults: augment.Defaults, channels: int
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


register_pipeline("images", ImageClassificationData)
