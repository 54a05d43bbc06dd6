"""A trained text classifier behind the server's Servable protocol: padded batch shapes, compiled at start.

Each model batch is padded up to the smallest size in `batch_sizes` (powers of two up to the server's
`max_batch_size`) that holds it; every size is compiled and run once in `warm_up()`, before the server
takes its first request, so no request waits for a compile.
"""

import jax
import numpy as np

from lm.serving.feedback import FeedbackLog
from lm.serving.server import BadInstance
from lm.serving.trained import TrainedModel


def padded_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to and including `max_batch_size`."""
    sizes = [1]
    while sizes[-1] < max_batch_size:
        sizes.append(min(sizes[-1] * 2, max_batch_size))
    return tuple(sizes)


class TextServable:
    """Instances: a string, or an object with a "text" string (the data's text field is accepted too)."""

    def __init__(self, trained: TrainedModel, name: str, max_batch_size: int):
        self.trained = trained
        self.name = name
        self.version = trained.step
        self.label_names = trained.label_names
        self.batch_sizes = padded_sizes(max_batch_size)
        self.text_keys = tuple(dict.fromkeys(("text", trained.data.text_field)))
        self._probabilities = jax.jit(trained.probabilities)
        self._variables = jax.device_put(trained.variables)  # Once: not a host-to-device copy per batch.

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

    def predict(self, examples: list[str]) -> np.ndarray:
        size = next(s for s in self.batch_sizes if s >= len(examples))
        texts = list(examples) + [examples[-1]] * (size - len(examples))
        inputs = self.trained.preprocess.encode(texts)
        return np.asarray(self._probabilities(self._variables, inputs))[: len(examples)]

    def warm_up(self) -> None:
        for size in self.batch_sizes:
            self.predict(["warm up"] * size)

    def feedback_record(self, instance: object, label: str, feedback: FeedbackLog) -> dict:
        return {self.trained.data.text_field: self.parse(instance), self.trained.data.label_field: label}
