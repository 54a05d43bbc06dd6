"""Trained classifiers behind the server's Servable protocol: padded batch shapes, compiled at start.

Each model batch is padded up to the smallest size in `batch_sizes` (powers of two up to the server's
`max_batch_size`) that holds it, and a text batch is cut to the smallest of the training run's length buckets
that holds its longest text; every (size, length) is compiled and run once in `warm_up()`, before the server
takes its first request, so no request waits for a compile. `PaddedServable` does that for any modality;
`TextServable` and `ImageServable` say what an instance is, how parsed instances become model inputs, and
what feedback writes.
"""

import base64

import jax
import numpy as np

from input_pipeline import bucketing
from lm.serving import images
from lm.serving.feedback import FeedbackLog
from lm.serving.server import BadInstance
from lm.serving.trained import TrainedModel


def padded_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to and including `max_batch_size`."""
    sizes = [1]
    while sizes[-1] < max_batch_size:
        sizes.append(min(sizes[-1] * 2, max_batch_size))
    return tuple(sizes)


class PaddedServable:
    """The shared part: the jitted model on device, batches padded to `batch_sizes`, the warm-up.

    A subclass gives `parse(instance)` (the Servable protocol's), `model_inputs(examples)` (parsed examples,
    already padded to a batch size -> the model's inputs), `feedback_record` and `warmup_instance`.
    """

    warmup_instance: object  # One valid request instance, run at every batch size by warm_up().

    def __init__(self, trained: TrainedModel, name: str, max_batch_size: int):
        self.trained = trained
        self.name = name
        self.version = trained.step
        self.label_names = trained.label_names
        self.batch_sizes = padded_sizes(max_batch_size)
        self._probabilities = jax.jit(trained.probabilities)
        self._variables = jax.device_put(trained.variables)  # Once: not a host-to-device copy per batch.

    def predict(self, examples: list) -> np.ndarray:
        size = next(s for s in self.batch_sizes if s >= len(examples))
        padded = list(examples) + [examples[-1]] * (size - len(examples))
        return np.asarray(self._probabilities(self._variables, self.model_inputs(padded)))[: len(examples)]

    def warm_up(self) -> int:
        """Compiles and runs every input shape a request can meet; returns how many there are."""
        example, shapes = self.parse(self.warmup_instance), 0
        for size in self.batch_sizes:
            for inputs in self.warmup_inputs([example] * size):
                jax.block_until_ready(self._probabilities(self._variables, inputs))
                shapes += 1
        return shapes

    def warmup_inputs(self, examples: list) -> list[dict[str, np.ndarray]]:
        """Model inputs of `examples` in every shape a batch of that size can take."""
        return [self.model_inputs(examples)]


class TextServable(PaddedServable):
    """Instances: a string, or an object with a "text" string (the data's text field is accepted too)."""

    warmup_instance = "warm up"

    def __init__(self, trained: TrainedModel, name: str, max_batch_size: int):
        super().__init__(trained, name, max_batch_size)
        self.text_keys = tuple(dict.fromkeys(("text", trained.data.text_field)))

    def parse(self, instance: object) -> str:
        if isinstance(instance, dict):
            present = [key for key in self.text_keys if key in instance]
            if not present:
                raise BadInstance(f"an object instance needs a {' or '.join(map(repr, self.text_keys))} field.")
            instance = instance[present[0]]
        if not isinstance(instance, str):
            raise BadInstance(f"expected a string, got {type(instance).__name__}.")
        if not instance.strip():
            raise BadInstance("the text is empty.")
        return instance

    def model_inputs(self, examples: list[str]) -> dict[str, np.ndarray]:
        """Token ids cut to the length bucket of the batch's longest text (the training run's buckets)."""
        return self.trained.encode(examples)

    def warmup_inputs(self, examples: list[str]) -> list[dict[str, np.ndarray]]:
        """One input per length bucket: the warm-up text's ids cut to each length (only the shape matters)."""
        full = self.trained.preprocess.encode(examples)
        lengths = self.trained.length_buckets or (self.trained.data.max_length,)
        return [bucketing.cut(full, length) for length in lengths]

    def feedback_record(self, instance: object, label: str, feedback: FeedbackLog) -> dict:
        return {self.trained.data.text_field: self.parse(instance), self.trained.data.label_field: label}


class ImageServable(PaddedServable):
    """Instances: `{"b64": "<base64 JPEG or PNG>"}` or `{"image": {"b64": ...}}`. Each image is decoded and
    preprocessed when its request is parsed (in the request's thread): one that does not decode fails its own
    request with 400 and never reaches a batch."""

    def __init__(self, trained: TrainedModel, name: str, max_batch_size: int):
        super().__init__(trained, name, max_batch_size)
        self.warmup_instance = {"b64": base64.b64encode(trained.warmup_raw).decode()}

    def parse(self, instance: object) -> np.ndarray:
        return self.trained.preprocess.one(images.instance_bytes(instance))

    def model_inputs(self, examples: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {self.trained.input_keys[0]: np.stack(examples)}

    def feedback_record(self, instance: object, label: str, feedback: FeedbackLog) -> dict:
        """Saves the image under the feedback folder's `<label>/` (a `config.data.train_dir` for training)."""
        contents = images.instance_bytes(instance)
        return {"image": feedback.save_image(contents, label, images.extension(contents)), "label": label}


SERVABLES = {"text": TextServable, "image": ImageServable}


def for_model(trained: TrainedModel, name: str, max_batch_size: int) -> PaddedServable:
    return SERVABLES[trained.modality](trained, name, max_batch_size)
