"""config.data.source='arrays': images in numpy arrays, from an .npz file or registered from Python.

`config.data.arrays_path` is an .npz with x_train, y_train [, x_val, y_val, x_test, y_test, class_names]; or
`config.data.arrays_name` names arrays given to `register_arrays(name, x_train, y_train, ...)` in the same
process. Images uint8 in [0, 255] or float in [0, 1], [N, H, W] or [N, H, W, C] with C 1 or 3; labels integers
in [0, num_classes). Splits the arrays leave out are carved out of train by the core.
"""

import io

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline.augment import Defaults
from input_pipeline.registry import register_source
from input_pipeline.source import Columns, InMemory, Request

_SUFFIXES = {"train": "train", "validation": "val", "test": "test"}
_REGISTERED: dict[str, dict[str, np.ndarray]] = {}


def register_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None = None,
                    y_val: np.ndarray | None = None, x_test: np.ndarray | None = None,
                    y_test: np.ndarray | None = None, class_names: list[str] | None = None) -> None:
    """Makes in-memory arrays the data of config.data.source='arrays', config.data.arrays_name=name."""
    arrays = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    arrays.update(x_test=x_test, y_test=y_test, class_names=class_names)
    _REGISTERED[name] = {key: np.asarray(value) for key, value in arrays.items() if value is not None}


@register_source("arrays", fields=[("image", "label")])
def load(request: Request) -> InMemory:
    arrays, where = read_arrays(request.config.data)
    given = {split: split_arrays(arrays, split, where) for split in request.splits}
    splits = {split: columns for split, columns in given.items() if columns is not None}
    if "train" not in splits or not len(splits["train"]["label"]):
        raise ValueError(f"{where} has no (or an empty) x_train; keys: {sorted(arrays)}. Give x_train and y_train.")
    class_names = _class_names(arrays, splits, where)
    channels = splits["train"]["image"].shape[-1]
    classes = "its class_names" if "class_names" in arrays else "the largest label + 1"
    return InMemory(description=f"{where}; classes: {classes}", class_names=class_names, splits=splits,
                    info={"image_format": "pixels", "image_defaults": Defaults(channels, (0.5,), (0.5,), False)})


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
        if name not in _REGISTERED:
            raise ValueError(
                f"config.data.arrays_name={name!r} is not registered (registered: {sorted(_REGISTERED)}). Call "
                f"input_pipeline.sources.arrays.register_arrays({name!r}, x_train, y_train, ...) first."
            )
        return dict(_REGISTERED[name]), f"config.data.arrays_name={name!r}"
    if not tf.io.gfile.exists(data.arrays_path):
        raise FileNotFoundError(
            f"config.data.arrays_path={data.arrays_path!r} does not exist. Set it to an .npz file with "
            "x_train, y_train [, x_val, y_val, x_test, y_test]."
        )
    with tf.io.gfile.GFile(data.arrays_path, "rb") as f, np.load(io.BytesIO(f.read())) as npz:
        return dict(npz), f"config.data.arrays_path={data.arrays_path!r}"


def split_arrays(arrays: dict[str, np.ndarray], split: str, where: str) -> Columns | None:
    """x_<suffix>, y_<suffix> -> checked columns with images [N, H, W, C]; None when both are absent."""
    x_key, y_key = f"x_{_SUFFIXES[split]}", f"y_{_SUFFIXES[split]}"
    if x_key not in arrays and y_key not in arrays:
        return None
    if x_key not in arrays or y_key not in arrays:
        raise ValueError(f"{where} has only one of {x_key} and {y_key}: give both or neither.")
    x, y = arrays[x_key], arrays[y_key]
    x = x[..., None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{where}: {x_key} has shape {x.shape}; give [N, H, W] or [N, H, W, C] with C 1 or 3.")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: {y_key} must be {len(x)} integer labels (one per image); got {y.dtype} {y.shape}.")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{where}: {x_key} is float outside [0, 1]; give floats in [0, 1] or uint8 in [0, 255].")
    return {"image": x, "label": y.astype(np.int32)}


def _class_names(arrays: dict[str, np.ndarray], splits: dict[str, Columns], where: str) -> list[str]:
    """The arrays' class_names, else "0", "1", ... up to the largest label; checks every label."""
    if "class_names" in arrays:
        names = [str(name) for name in arrays["class_names"]]
    else:
        names = [str(i) for i in range(1 + max(int(s["label"].max(initial=0)) for s in splits.values()))]
    for split, columns in splits.items():
        labels = columns["label"]
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"{where}: the {split} labels must lie in [0, {len(names)}) (the class count).")
    return names
