"""Keras applications' VGG16/VGG19 and ResNet50/101/152 weights -> our `lm.models.vgg` and `lm.models.resnet`.

Files (read with h5py; TensorFlow and Keras are not needed):
  `.weights.h5`  Keras 3 `model.save_weights`: groups `layers/<class>_<n>/vars/<i>`; the layer's own name
                 is the `name` attribute of `vars` (recent Keras 3), else taken from `.keras`'s config.json
  `.keras`       Keras 3 `model.save`: a zip of config.json and model.weights.h5
  `.h5`          legacy HDF5: `model.save` (under `model_weights/`) or Keras 2 `save_weights`, which is the
                 format of the published application weights (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`)
Layers are found by the names keras.applications gives them (block1_conv1, fc1, conv2_block1_1_conv...).

VGG: Keras' VGG has our layout without BatchNorm (3x3 same-padded convolutions with bias, 2x2 max-pools,
fc1/fc2 of 4096 and `predictions`, no dropout at inference). Its Flatten is HWC, as ours, so fc1 maps
as is; fc1's input size fixes our `pool_size` (7 at 224x224, where our adaptive pool is the identity).
Without the top (`include_top=False`) our classifier stays fresh.

ResNet: Keras' ResNet50/101/152 are v1: the stride sits on the first 1x1 convolution of a bottleneck, every
convolution has a bias and BatchNorm's epsilon is 1.001e-5; padding is symmetric as ours (ZeroPadding2D
+ valid, or 'same' at stride 1; the max-pool pads with zeros after a ReLU, equal to -inf padding). Our
ResNet represents it exactly with `stride_in_1x1=True, conv_bias=True, norm_epsilon=1.001e-5`
(`read_config` returns them). ResNet50V2 (pre-activation) is refused.

Input: keras.applications' ImageNet weights expect `preprocess_input`'s "caffe" inputs: BGR, 0-255,
minus the per-channel mean. By default (`input_order="rgb"`) the first convolution's input channels are
reversed so that our model takes RGB, as the rest of lm does; then `CAFFE_MEAN`/`CAFFE_STD` (for
`config.data.mean/std` on [0, 1] RGB pixels, which `configure` sets) reproduce the preprocessing.
`input_order="bgr"` keeps the kernels as stored (the same inputs as the Keras model).
"""

import dataclasses
import io
import json
import re
import zipfile
from collections.abc import Callable

import h5py
import ml_collections
import numpy as np

from lm import files
from lm.models import resnet, vgg
from lm.paths import param_name
from lm.weights import assign, configuring
from lm.weights.report import ImportReport

# "caffe" preprocessing as normalisation of [0, 1] RGB pixels: (x - mean) / std = 255 x - mean_255.
CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)
EXTENSIONS = (".weights.h5", ".keras", ".h5")

# Variable order inside `vars` of a Keras 3 weights file, by layer class.
_VAR_NAMES = {
    "conv2d": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}
_KERAS_RESNET_DEPTHS = {sizes: depth for depth, sizes in resnet.STAGE_SIZES.items() if depth >= 50}

Layers = dict[str, dict[str, np.ndarray]]


def is_keras_file(path: str) -> bool:
    return path.endswith(EXTENSIONS)


def detect(path: str) -> bool:
    """A Keras weights or model file (by its extension)."""
    return files.is_file(path) and is_keras_file(path)


def _snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case, for class names such as Conv2D or BatchNormalization."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _config_layer_names(config: dict) -> dict[str, str]:
    """Keras 3 weights-file group name (`conv2d_3`) -> layer name, from a model's config.json (layer order)."""
    counts: dict[str, int] = {}
    names = {}
    for layer in config["config"]["layers"]:
        base = _snake_case(layer["class_name"])
        count = counts.get(base, 0)
        counts[base] = count + 1
        names[base if count == 0 else f"{base}_{count}"] = layer["config"]["name"]
    return names


def _read_keras3(file: h5py.File, group_names: dict[str, str] | None) -> Layers:
    layers: Layers = {}
    for group, node in file["layers"].items():
        if "vars" not in node or not len(node["vars"]):
            continue
        kind = re.sub(r"_\d+$", "", group)
        if kind not in _VAR_NAMES:
            raise ValueError(f"unexpected layer {group!r} with weights in a Keras weights file")
        name = node["vars"].attrs.get("name") or (group_names or {}).get(group)
        if name is None:
            raise ValueError(
                f"this Keras weights file does not name its layers (group {group!r} has no 'name'; older Keras 3): "
                "save the model as .keras (which carries its config) or re-save with a recent Keras"
            )
        values = [np.asarray(node["vars"][str(i)]) for i in range(len(node["vars"]))]
        layers[str(name)] = dict(zip(_VAR_NAMES[kind], values))
    return layers


def _read_legacy(group: h5py.Group) -> Layers:
    layers: Layers = {}
    for name in group.attrs["layer_names"]:
        name = name.decode() if isinstance(name, bytes) else str(name)
        weights = {}
        for weight in group[name].attrs["weight_names"]:
            weight = weight.decode() if isinstance(weight, bytes) else str(weight)
            weights[weight.rsplit("/", 1)[-1].removesuffix(":0")] = np.asarray(group[name][weight])
        if weights:
            layers[name] = weights
    return layers


def read_layers(path: str) -> Layers:
    """Layer name -> {kernel, bias, gamma, beta, moving_mean, moving_variance} arrays, from any of the formats."""
    with files.local_file(path) as local:
        return _read_layers(local, path)


def _read_layers(local: str, path: str) -> Layers:
    if path.endswith(".keras"):
        with zipfile.ZipFile(local) as archive:
            config = json.loads(archive.read("config.json"))
            weights = io.BytesIO(archive.read("model.weights.h5"))
        with h5py.File(weights, "r") as file:
            return _read_keras3(file, _config_layer_names(config))
    with h5py.File(local, "r") as file:
        if "layers" in file and "layer_names" not in file.attrs:
            return _read_keras3(file, None)
        group = file["model_weights"] if "model_weights" in file else file
        if "layer_names" not in group.attrs:
            raise ValueError(f"{path}: neither a Keras 3 weights file nor a legacy HDF5 weights file")
        return _read_legacy(group)


def _architecture(layers: Layers, path: str) -> tuple[str, int]:
    if "post_bn" in layers or any(name.endswith("_preact_bn") for name in layers):
        raise ValueError(f"{path}: a pre-activation ResNet (ResNet*V2); only the v1 ResNets map onto ours")
    if "block1_conv1" in layers:
        return "vgg", 19 if "block5_conv4" in layers else 16
    if "conv1_conv" in layers:
        sizes = tuple(
            len({m.group(1) for name in layers if (m := re.match(rf"conv{stage}_block(\d+)_", name))})
            for stage in range(2, 6)
        )
        if sizes not in _KERAS_RESNET_DEPTHS:
            raise ValueError(f"{path}: a ResNet with {sizes} blocks per stage; ours have {_KERAS_RESNET_DEPTHS}")
        return "resnet", _KERAS_RESNET_DEPTHS[sizes]
    raise ValueError(
        f"{path}: not a keras.applications VGG16/VGG19/ResNet50/101/152 (its layers look like {sorted(layers)[:4]})"
    )


def read_config(path: str) -> dict:
    """Our model-config values for a Keras application file, with 'name' (vgg | resnet).

    VGG: depth, batch_norm=False, and with the top classifier_width, pool_size, num_classes.
    ResNet: depth, variant='imagenet', width=64, stride_in_1x1, conv_bias, norm_epsilon, and num_classes
    when the top is present.
    """
    layers = read_layers(path)
    name, depth = _architecture(layers, path)
    return {"name": name, **_ARCHITECTURES[name].config(layers, path, depth)}


def configure(config: ml_collections.ConfigDict, path: str) -> None:
    """The file's architecture into config.model, the caffe preprocessing into config.data where it is open."""
    values = read_config(path)
    configuring.architecture(config, values["name"], values, "Keras application")
    configuring.normalization(config, CAFFE_MEAN, CAFFE_STD, "keras.applications (caffe)")


def _vgg_config(layers: Layers, path: str, depth: int) -> dict:
    config = {"depth": depth, "batch_norm": False}
    if "fc1" in layers:
        flat, width = layers["fc1"]["kernel"].shape
        pool_size = int(round((flat / 512) ** 0.5))
        if 512 * pool_size**2 != flat:
            raise ValueError(f"{path}: fc1 takes {flat} inputs, not 512 x a square grid")
        num_classes = layers["predictions"]["kernel"].shape[1]
        config.update(classifier_width=width, pool_size=pool_size, num_classes=num_classes)
    return config


def _resnet_config(layers: Layers, path: str, depth: int) -> dict:
    config = {
        "depth": depth, "variant": "imagenet", "width": layers["conv1_conv"]["kernel"].shape[-1],
        "stride_in_1x1": True, "conv_bias": True, "norm_epsilon": 1.001e-5,
    }
    if "predictions" in layers:
        config["num_classes"] = layers["predictions"]["kernel"].shape[1]
    return config


def _dense(table: dict, ours: assign.Path, layers: Layers, name: str) -> None:
    """A Conv2D or Dense layer: Keras' kernels ([kh, kw, in, out] and [in, out]) are already in our layout."""
    for var in ("kernel", "bias"):
        if var in layers.get(name, {}):
            table[ours + (var,)] = (f"{name}/{var}", layers[name][var])


def _vgg_table(layers: Layers, depth: int) -> tuple[assign.Table, assign.Table]:
    table: assign.Table = {}
    for stage, channels in enumerate(vgg.STAGES[depth]):
        for index in range(len(channels)):
            _dense(table, ("stages", stage, index, "conv"), layers, f"block{stage + 1}_conv{index + 1}")
    for ours, name in (("fc1", "fc1"), ("fc2", "fc2"), ("head", "predictions")):
        _dense(table, (ours,), layers, name)
    return table, {}


def _conv_norm(params: dict, stats: dict, ours: tuple[assign.Path, assign.Path], layers: Layers, keras: str) -> None:
    conv, norm = ours
    _dense(params, conv, layers, f"{keras}_conv")
    bn = layers[f"{keras}_bn"]
    params[norm + ("scale",)] = (f"{keras}_bn/gamma", bn["gamma"])
    params[norm + ("bias",)] = (f"{keras}_bn/beta", bn["beta"])
    stats[norm + ("mean",)] = (f"{keras}_bn/moving_mean", bn["moving_mean"])
    stats[norm + ("var",)] = (f"{keras}_bn/moving_variance", bn["moving_variance"])


def _resnet_table(layers: Layers, depth: int) -> tuple[assign.Table, assign.Table]:
    params: assign.Table = {}
    stats: assign.Table = {}
    _conv_norm(params, stats, (("stem", "conv"), ("stem", "norm")), layers, "conv1")
    block = 0
    for stage, num_blocks in enumerate(resnet.STAGE_SIZES[depth]):
        for index in range(num_blocks):
            keras = f"conv{stage + 2}_block{index + 1}"
            ours = ("blocks", block)
            for k in (1, 2, 3):
                _conv_norm(params, stats, (ours + (f"conv{k}",), ours + (f"norm{k}",)), layers, f"{keras}_{k}")
            if f"{keras}_0_conv" in layers:
                shortcut = (ours + ("shortcut", "conv"), ours + ("shortcut", "norm"))
                _conv_norm(params, stats, shortcut, layers, f"{keras}_0")
            block += 1
    _dense(params, ("head",), layers, "predictions")
    return params, stats


@dataclasses.dataclass(frozen=True)
class _Architecture:
    config: Callable[[Layers, str, int], dict]  # (layers, path, depth) -> our model-config values
    tables: Callable[[Layers, int], tuple[assign.Table, assign.Table]]  # -> (params, batch_stats) name tables
    first_conv: assign.Path  # its input channels are reversed for RGB inputs
    fresh: tuple[assign.Path, ...]  # may stay fresh: the classifier without a top or for another class count
    what: str


_ARCHITECTURES = {
    "vgg": _Architecture(_vgg_config, _vgg_table, ("stages", 0, 0, "conv", "kernel"), (("fc1",), ("fc2",), ("head",)),
                         "VGG parameter"),
    "resnet": _Architecture(_resnet_config, _resnet_table, ("stem", "conv", "kernel"), (("head",),),
                            "ResNet parameter"),
}


def load(
    path: str, params: dict, batch_stats: dict | None = None, *, input_order: str = "rgb"
) -> tuple[dict, dict | None, ImportReport]:
    """Our VGG or ResNet parameters (and ResNet BatchNorm statistics) from a Keras application file.

    `params`/`batch_stats` are our pure dicts (arrays or ShapeDtypeStructs); batch_stats is needed for a
    ResNet and returned as None for VGG. Returns (params, batch_stats, report); the report's 'new' holds what
    stayed fresh (the classifier without a top, or a head of another class count).
    """
    if input_order not in ("rgb", "bgr"):
        raise ValueError(f"input_order={input_order!r}: use 'rgb' (reverse the first convolution's inputs) or 'bgr'")
    layers = read_layers(path)
    name, depth = _architecture(layers, path)
    architecture = _ARCHITECTURES[name]
    param_table, stat_table = architecture.tables(layers, depth)
    first, fresh = architecture.first_conv, architecture.fresh
    notes = []
    if input_order == "rgb":
        key, kernel = param_table[first]
        param_table[first] = (key, np.ascontiguousarray(kernel[:, :, ::-1, :]))
        notes.append(f"{param_name(first)}: input channels reversed (Keras' BGR inputs -> RGB)")
    new_params, report = assign.fill(params, param_table, what=architecture.what, fresh_on_mismatch=fresh)
    report.source = path
    new_stats = None
    if stat_table:
        if batch_stats is None:
            raise ValueError("a Keras ResNet carries BatchNorm statistics: pass our batch_stats to fill")
        new_stats, stats_report = assign.fill(batch_stats, stat_table, what="ResNet BatchNorm statistic")
        report.add(stats_report, "batch_stats/")
    absent = [entry for entry in report.new if not entry.startswith(tuple(f"{p[0]}/" for p in fresh))]
    if absent:
        raise ValueError(f"{path} has nothing for our {absent[:4]}; does the model config match it?")
    if "predictions" not in layers:
        notes.append("the file has no top (include_top=False): our classifier stays fresh")
    report.notes = notes + report.notes
    everything = {f"{layer}/{var}" for layer, variables in layers.items() for var in variables}
    report.unused = sorted(everything - set(report.used))
    return new_params, new_stats, report
