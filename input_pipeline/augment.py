"""Image preprocessing and augmentation ops for tf.data: one example at a time, except `mixup` (a batch).

Images are float32 [H, W, C] in [0, 1] from `to_unit_float` until `normalize`; every op keeps that range.
Random ops are stateless: each takes a `seed` of shape [2] (int32 or int64) and returns the same result
for the same seed, so a resumed or replayed input pipeline augments every example exactly as before.
`example_seed(base, epoch, index)` derives an example's seed; `tf.random.experimental.stateless_split`
gives each op of one example its own.

- Evaluation: `resize` (to a square) or `resize_shorter_and_centre_crop` (ImageNet style).
- Training: `inception_crop` (random-resized crop, Szegedy et al. 2015), `pad_crop` (pad, then random crop
  back to the input size: the CIFAR recipe of He et al. 2016), `random_flip` (horizontal), `mixup` (Zhang
  et al. 2018).
"""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What an image source implies when the config leaves it open: channels, normalisation, eval resizing."""

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    photos: bool  # Photos of varied sizes: evaluate ImageNet-style (resize 1/0.875, centre crop).


PHOTOS = Defaults(3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), photos=True)  # ImageNet's statistics
INCEPTION_AREA_RANGE = (0.08, 1.0)
INCEPTION_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


def example_seed(base: tf.Tensor, epoch: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """The stateless seed ([2] int64) of example `index` in `epoch`, from a base seed ([2] int64)."""
    seed = tf.random.experimental.stateless_fold_in(tf.cast(base, tf.int64), tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(index, tf.int64))


def to_unit_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float images are taken to be in [0, 1] already."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def set_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """[H, W, 1 | 3 | 4] -> [H, W, channels] (grayscale <-> RGB, alpha dropped)."""
    image = image[..., :3]
    have = image.shape[-1]
    if have == channels:
        return image
    if channels == 3:
        return tf.image.grayscale_to_rgb(image)
    return tf.image.rgb_to_grayscale(image)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes to [size, size] (bilinear, antialiased when shrinking), ignoring the aspect ratio."""
    return _clip(tf.image.resize(image, [size, size], antialias=True))


def resize_shorter_and_centre_crop(image: tf.Tensor, resize_to: int, size: int) -> tf.Tensor:
    """Resizes the shorter side to `resize_to` (keeping the aspect ratio), then crops the central square."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_to / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    image = tf.image.resize(image, new_shape, antialias=True)
    top, left = (new_shape[0] - size) // 2, (new_shape[1] - size) // 2
    return _clip(image[top : top + size, left : left + size])


def inception_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    area_range: tuple[float, float] = INCEPTION_AREA_RANGE,
    aspect_ratio_range: tuple[float, float] = INCEPTION_ASPECT_RATIO_RANGE,
) -> tf.Tensor:
    """A random crop of `area_range` of the image area and `aspect_ratio_range` (w/h), resized to size x size.

    When ten attempts find no such crop (tiny or very elongated images) the whole image is used.
    """
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return resize(tf.slice(image, begin, crop_size), size)


def pad_crop(image: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
    """Pads `pad` zero pixels on each side, then crops a random window of the original size."""
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors the image left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def color_distortion(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """SimCLR's colour distortion (Chen et al. 2020, appendix A) of an RGB image in [0, 1].

    With probability 0.8: random brightness, contrast and saturation of 0.8 x strength and hue of 0.2 x
    strength; then with probability 0.2: grayscale. Stays in [0, 1].
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    s = 0.8 * strength
    jittered = _clip(tf.image.stateless_random_brightness(image, s, seeds[0]))
    jittered = _clip(tf.image.stateless_random_contrast(jittered, 1 - s, 1 + s, seeds[1]))
    jittered = _clip(tf.image.stateless_random_saturation(jittered, max(1 - s, 0.0), 1 + s, seeds[2]))
    jittered = _clip(tf.image.stateless_random_hue(jittered, min(0.2 * strength, 0.5), seeds[3]))
    image = tf.where(tf.random.stateless_uniform([], seeds[4]) < 0.8, jittered, image)
    gray = tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])
    return tf.where(tf.random.stateless_uniform([], seeds[5]) < 0.2, gray, image)


def mixup(
    images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float, num_classes: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes each example of a batch with the next one (cyclically) by one weight lam ~ Beta(alpha, alpha).

    lam is folded into [0.5, 1] so that an example's own label stays the dominant one: `labels` remain valid
    hard labels. Returns the mixed images and the soft labels [batch, num_classes] (rows sum to 1).
    """
    gammas = tf.random.stateless_gamma([2], seed=seed, alpha=alpha)
    lam = tf.math.divide_no_nan(gammas[0], gammas[0] + gammas[1])
    lam = tf.maximum(lam, 1.0 - lam)
    partners = tf.roll(images, shift=-1, axis=0)
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    mixed = lam * images + (1.0 - lam) * partners
    label_probs = lam * one_hot + (1.0 - lam) * tf.roll(one_hot, shift=-1, axis=0)
    return mixed, label_probs


def normalize(image: tf.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> tf.Tensor:
    """(image - mean) / std per channel."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _clip(image: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(image, 0.0, 1.0)
