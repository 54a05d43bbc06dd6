"""config.data.source='digits': scikit-learn's 1797 handwritten digits (8x8, shipped with scikit-learn, offline)."""

import numpy as np

from input_pipeline.augment import Defaults
from input_pipeline.registry import register_source
from input_pipeline.source import InMemory, Request

DIGITS = Defaults(1, (0.3053,), (0.3760,), photos=False)


@register_source("digits", fields=[("image", "label")])
def load(request: Request) -> InMemory:
    """Pixels in 0..16 -> float32 [0, 1], [N, 8, 8, 1]; validation/test are carved out by the core."""
    try:
        from sklearn import datasets
    except ImportError as e:
        raise ImportError("config.data.source='digits' needs scikit-learn: pip install scikit-learn.") from e
    digits = datasets.load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    train = {"image": images, "label": digits.target.astype(np.int32)}
    return InMemory(description="scikit-learn digits", class_names=[str(i) for i in range(10)],
                    info={"image_format": "pixels", "image_defaults": DIGITS}, splits={"train": train})
