"""The deterministic image preprocessing of evaluation, as one object that training, predict, serve and export share.

`EvalImages` holds what the preprocessing depends on once the source's defaults are resolved (the input side,
the channels, the per-channel mean and std, the evaluation resize) and applies it with the same TensorFlow ops
everywhere: the training pipeline's evaluation batches, `--mode=predict` on image files, the server's requests
and the SavedModel's graph. Its JSON form (`to_json` / `from_json`) is what a training run records in its
workdir, so a served model preprocesses exactly as it was evaluated without the training data at hand.
"""

import dataclasses

import tensorflow as tf

from input_pipeline import augment


@dataclasses.dataclass(frozen=True)
class EvalImages:
    image_size: int
    channels: int
    mean: tuple[float, ...]  # One value per channel, for [0, 1] pixels.
    std: tuple[float, ...]
    eval_resize: int  # > 0: the shorter side to this, then the centre crop; 0: straight to image_size.

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    def decode(self, contents: tf.Tensor) -> tf.Tensor:
        """Encoded image bytes (JPEG, PNG, ...) -> float32 [H, W, channels] in [0, 1]."""
        return tf.io.decode_image(contents, channels=self.channels, dtype=tf.float32, expand_animations=False)

    def resize(self, image: tf.Tensor) -> tf.Tensor:
        """A [0, 1] image -> [image_size, image_size, C] (shorter side to eval_resize and centre crop, or straight)."""
        if self.eval_resize > 0:
            return augment.resize_shorter_and_centre_crop(image, self.eval_resize, self.image_size)
        return augment.resize(image, self.image_size)

    def normalize(self, image: tf.Tensor) -> tf.Tensor:
        return tf.ensure_shape(augment.normalize(image, self.mean, self.std), self.shape)

    def __call__(self, image: tf.Tensor) -> tf.Tensor:
        """A [0, 1] image [H, W, channels] -> the normalised model input."""
        return self.normalize(self.resize(image))

    def from_bytes(self, contents: tf.Tensor) -> tf.Tensor:
        """One encoded image (a scalar string) -> the normalised model input [image_size, image_size, channels]."""
        return self(self.decode(contents))

    def batch_from_bytes(self, contents: tf.Tensor) -> tf.Tensor:
        """[batch] encoded images -> [batch, image_size, image_size, channels]; any batch size, also in a graph."""
        return tf.map_fn(self.from_bytes, contents, fn_output_signature=tf.TensorSpec(self.shape, tf.float32))

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, values: dict) -> "EvalImages":
        return cls(image_size=int(values["image_size"]), channels=int(values["channels"]),
                   mean=tuple(float(v) for v in values["mean"]), std=tuple(float(v) for v in values["std"]),
                   eval_resize=int(values["eval_resize"]))
