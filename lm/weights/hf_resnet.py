"""Hugging Face ResNet directories (`ResNetModel`, `ResNetForImageClassification`) -> our `lm.models.resnet`.

transformers' own ResNet has our layout: a 7x7/2 convolution (padding 3, no bias) + BatchNorm + ReLU
and a 3x3/2 max-pool (padding 1) as the stem; stages of basic or bottleneck layers whose convolutions
pad kernel // 2 and have no bias, each followed by BatchNorm (eps 1e-5); a 1x1 projection shortcut +
BatchNorm where the shape changes; global average pooling and a linear classifier. `depths` and
`layer_type` give our depth (e.g. [3, 4, 6, 3] + bottleneck = 50), `embedding_size` our width, and
`hidden_sizes` must be width x expansion x 2**stage. Its bottleneck strides the 3x3 convolution (v1.5,
as ours) unless `downsample_in_bottleneck` is true, which strides the first 1x1 (v1): that maps onto our
`stride_in_1x1` option. `downsample_in_first_stage` (a strided first stage) has no counterpart here.

`configure` writes the architecture (and the preprocessor's normalisation) into a config; `load` returns our
parameters and our BatchNorm statistics (running mean and variance).
"""

import ml_collections
import numpy as np

from lm.models import resnet
from lm.weights import assign, configuring
from lm.weights.reader import is_hf_directory, read_hf_config, read_state_dict
from lm.weights.report import ImportReport

_CONFIG_CHECKS = (
    ("model_type", None, ("resnet",), "only transformers' ResNet maps onto lm.models.resnet"),
    ("hidden_act", "relu", ("relu",), "our ResNet uses ReLU"),
    ("num_channels", 3, (3,), "our ResNet takes RGB images"),
    ("downsample_in_first_stage", False, (False,), "our first stage has stride 1 after the max-pool"),
)


def read_config(path: str) -> dict:
    """config.json of a HF ResNet directory -> our resnet model-config values.

    Keys: depth, variant ('imagenet'), width, stride_in_1x1, and num_classes when the checkpoint is a
    classifier (`architectures` names ResNetForImageClassification).
    """
    file, hf = read_hf_config(path)
    for key, default, allowed, why in _CONFIG_CHECKS:
        if hf.get(key, default) not in allowed:
            raise ValueError(f"{file}: {key}={hf.get(key, default)!r} is not supported ({why}); need {allowed}")
    depths = tuple(hf.get("depths", (3, 4, 6, 3)))
    bottleneck = hf.get("layer_type", "bottleneck") == "bottleneck"
    matches = [d for d, sizes in resnet.STAGE_SIZES.items() if sizes == depths and (d >= 50) == bottleneck]
    if not matches:
        raise ValueError(
            f"{file}: depths={list(depths)} with layer_type={hf.get('layer_type', 'bottleneck')!r} is none of our "
            f"ResNets ({ {d: s for d, s in resnet.STAGE_SIZES.items()} }; 50 and up are bottleneck)"
        )
    width = hf.get("embedding_size", 64)
    expansion = resnet.BOTTLENECK_EXPANSION if bottleneck else 1
    expected = [width * expansion * 2**stage for stage in range(len(depths))]
    if list(hf.get("hidden_sizes", (256, 512, 1024, 2048))) != expected:
        raise ValueError(
            f"{file}: hidden_sizes={hf.get('hidden_sizes')} but our ResNet with width (embedding_size) {width} has "
            f"{expected}"
        )
    config = {
        "depth": matches[0],
        "variant": "imagenet",
        "width": width,
        "stride_in_1x1": bool(bottleneck and hf.get("downsample_in_bottleneck", False)),
    }
    if any(name.endswith("ForImageClassification") for name in hf.get("architectures") or ()):
        config["num_classes"] = len(hf["id2label"]) if "id2label" in hf else hf["num_labels"]
    return config


def _conv_norm(ours: assign.Path, hf: str) -> tuple[dict, dict]:
    """(params, batch_stats) name tables of one HF ResNetConvLayer / ResNetShortCut."""
    conv, norm = ours
    params = {
        conv + ("kernel",): f"{hf}.convolution.weight",
        norm + ("scale",): f"{hf}.normalization.weight",
        norm + ("bias",): f"{hf}.normalization.bias",
    }
    stats = {norm + ("mean",): f"{hf}.normalization.running_mean", norm + ("var",): f"{hf}.normalization.running_var"}
    return params, stats


def _names(depth: int) -> tuple[dict[assign.Path, str], dict[assign.Path, str]]:
    """Our params path -> canonical HF name, and the same for the BatchNorm statistics."""
    params, stats = _conv_norm((("stem", "conv"), ("stem", "norm")), "embedder.embedder")
    convs_per_block = 3 if depth >= 50 else 2
    block = 0
    for stage, num_blocks in enumerate(resnet.STAGE_SIZES[depth]):
        for layer in range(num_blocks):
            hf = f"encoder.stages.{stage}.layers.{layer}"
            parts = [((("blocks", block, f"conv{k + 1}"), ("blocks", block, f"norm{k + 1}")), f"{hf}.layer.{k}")
                     for k in range(convs_per_block)]
            parts.append(((("blocks", block, "shortcut", "conv"), ("blocks", block, "shortcut", "norm")),
                          f"{hf}.shortcut"))
            for ours, name in parts:
                p, s = _conv_norm(ours, name)
                params.update(p)
                stats.update(s)
            block += 1
    params[("head", "kernel")] = "classifier.1.weight"
    params[("head", "bias")] = "classifier.1.bias"
    return params, stats


def convert(state_dict: dict[str, np.ndarray], depth: int) -> tuple[assign.Table, assign.Table]:
    """(params table, batch_stats table): our path -> (checkpoint key, value in our layout), where present."""
    names = {key.removeprefix("resnet."): key for key in state_dict}
    param_names, stat_names = _names(depth)
    if "embedder.embedder.convolution.weight" not in names:
        raise ValueError(f"not a transformers ResNet checkpoint: its keys look like {sorted(state_dict)[:3]}")
    tables: tuple[assign.Table, assign.Table] = ({}, {})
    for table, wanted in zip(tables, (param_names, stat_names)):
        for ours, hf in wanted.items():
            if hf in names:
                value = state_dict[names[hf]]
                if ours[-1] == "kernel" and ours[0] != "head":
                    value = assign.torch_conv(value)
                elif ours[-1] == "kernel":
                    value = assign.torch_linear(value)
                table[ours] = (names[hf], value)
    missing = [hf for ours, hf in {**param_names, **stat_names}.items()
               if ours[0] != "head" and "shortcut" not in ours and hf not in names]
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} ResNet-{depth} weights, e.g. {missing[:3]}; is the depth right?"
        )
    return tables


def detect(path: str) -> bool:
    """A Hugging Face directory whose config.json says model_type 'resnet'."""
    return is_hf_directory(path) and read_hf_config(path)[1].get("model_type") == "resnet"


def configure(config: ml_collections.ConfigDict, path: str) -> None:
    """The directory's ResNet architecture into config.model, its preprocessor's normalisation into config.data."""
    configuring.hf_vision(config, path, "resnet", read_config(path))


def load(path: str, params: dict, batch_stats: dict) -> tuple[dict, dict, ImportReport]:
    """Our ResNet parameters and BatchNorm statistics (arrays or ShapeDtypeStructs) from a HF ResNet directory.

    Returns (params, batch_stats, report); loaded leaves are host numpy arrays in our dtypes. The head loads
    when the checkpoint has a classifier of our head's shape, else stays fresh ('new', with a note); 'unused'
    does not count num_batches_tracked.
    """
    config = read_config(path)
    state_dict = read_state_dict(path)
    param_table, stat_table = convert(state_dict, config["depth"])
    new_params, report = assign.fill(params, param_table, what="ResNet parameter", fresh_on_mismatch=(("head",),))
    new_stats, stats_report = assign.fill(batch_stats, stat_table, what="ResNet BatchNorm statistic")
    absent = [name for name in report.new if not name.startswith("head/")] + stats_report.new
    if absent:
        raise ValueError(f"the checkpoint has nothing for our {absent[:4]}; does the model config match it?")
    report.add(stats_report, "batch_stats/")
    report.source = path
    if ("head", "kernel") not in param_table:
        report.notes.append("the checkpoint has no classifier: our head stays fresh")
    used = set(report.used)
    report.unused = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    return new_params, new_stats, report
