"""Checkpoint files -> name -> numpy array, without torch: safetensors and `torch.save` zip files.

`read_state_dict(directory)` reads a Hugging Face directory's `model.safetensors`, else its
`pytorch_model.bin`; `read_hf_config(directory)` its config.json. A torch zip checkpoint holds
`<archive>/data.pkl`, a pickle whose tensors point by key at raw storages stored as `<archive>/data/<key>`.
The unpickler here is restricted: it resolves only the globals a state dict needs (`OrderedDict`, torch's
tensor rebuild functions, the typed storage classes), so loading a checkpoint cannot run code. Legacy
(pre-zip, torch < 1.6) files are refused with a message.
"""

import collections
import dataclasses
import io
import json
import pickle
import zipfile

import ml_dtypes
import numpy as np
import safetensors
import safetensors.flax
import safetensors.numpy
from etils import epath

from lm import files

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2`: a strided view of a storage, copied into its own array."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"bad tensor layout: offset {offset}, size {size}, stride {stride}")
    if all(n > 0 for n in size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise pickle.UnpicklingError(
                f"tensor {size} / {stride} at {offset} overruns its storage ({storage.size})"
            )
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_) -> np.ndarray:
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self._archive, self._prefix, self._big_endian = archive, prefix, big_endian
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only tensors and dicts of tensors are read"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, storage_type.dtype, numel)
        return self._storages[key]

    def _read_storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        raw = self._archive.read(f"{self._prefix}data/{key}")
        if len(raw) < numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} holds {len(raw)} bytes, expected {numel} x {dtype}")
        if self._big_endian:
            swapped = np.frombuffer(raw, np.dtype(f"u{dtype.itemsize}"), count=numel).byteswap()
            return swapped.view(dtype)
        return np.frombuffer(raw, dtype, count=numel)


def _archive_prefix(archive: zipfile.ZipFile, path: str) -> str:
    pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
    if len(pickles) != 1:
        raise ValueError(f"{path}: expected one data.pkl in the torch zip archive, found {pickles}")
    return pickles[0][: -len("data.pkl")]


def _is_big_endian(archive: zipfile.ZipFile, prefix: str) -> bool:
    if prefix + "byteorder" not in archive.namelist():
        return False  # torch writes no byteorder record before 1.11: such files are little-endian
    return archive.read(prefix + "byteorder").decode().strip() == "big"


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state dict (name -> tensor) as name -> numpy array (bfloat16 via ml_dtypes)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a torch zip checkpoint (a legacy file from torch < 1.6?); re-save it with "
            "torch.save from torch >= 1.6, or convert it to model.safetensors."
        )
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive, path)
        state = _Unpickler(archive, prefix, _is_big_endian(archive, prefix)).load()
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors (name -> tensor)")
    return dict(state)


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    with safetensors.safe_open(file, framework="numpy") as f:
        names = f.keys()
        has_bfloat16 = any(f.get_slice(name).get_dtype() == "BF16" for name in names)
    if has_bfloat16:  # numpy has no bfloat16 of its own; the flax reader yields ml_dtypes.bfloat16
        return {key: np.asarray(value) for key, value in safetensors.flax.load_file(file).items()}
    return safetensors.numpy.load_file(file)


def is_hf_directory(path: str) -> bool:
    """A directory with config.json and one of WEIGHT_FILES."""
    directory = epath.Path(path)
    return (directory / "config.json").is_file() and any((directory / name).is_file() for name in WEIGHT_FILES)


def read_hf_config(path: str) -> tuple[epath.Path, dict]:
    """(the file, its contents) of a Hugging Face directory's config.json."""
    file = epath.Path(path) / "config.json"
    return file, json.loads(file.read_text())


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Weight name -> numpy array of a Hugging Face directory: model.safetensors, else pytorch_model.bin."""
    directory = epath.Path(path)
    if (directory / "model.safetensors").is_file():
        with files.local_file(directory / "model.safetensors") as local:
            return read_safetensors(local)
    if (directory / "pytorch_model.bin").is_file():
        with files.local_file(directory / "pytorch_model.bin") as local:
            return read_torch_zip(local)
    raise FileNotFoundError(f"no weights in {path}: looked for {', '.join(WEIGHT_FILES)}")
