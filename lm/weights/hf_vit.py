"""Hugging Face ViT directories (`ViTModel`, `ViTForImageClassification`) -> our `lm.models.vit` ViT.

`read_config` gives our vit model-config values (the variant from hidden size, layers and heads), which
`configure` writes into a config;
`load` fills our parameters from config.json + model.safetensors or pytorch_model.bin (read
without torch). Both are pre-LN encoders with a class token, exact GELU and a head on the final
LayerNorm of the class token, so the weights map one-to-one: Linear kernels are transposed, the patch
convolution goes from [out, in, kh, kw] to [kh, kw, in, out]. The classifier loads when the checkpoint
has one of our head's shape; otherwise our head stays fresh and the report says so (ViTModel's
pooler is never used: our head reads the class token directly, as ViTForImageClassification does).

Position embeddings are resampled when our image size (or patch grid) differs from the checkpoint's:
the patch grid is resized in 2-D with `jax.image.resize` and the class token's embedding is kept.
Note that HF's own `interpolate_pos_encoding` uses torch's bicubic (a=-0.75, clamped borders), whose
numbers differ from jax.image.resize's (Keys a=-0.5, renormalised borders); both are starting points
for fine-tuning, not the same function.

HF ViT's LayerNorm epsilon is 1e-12 (ours defaults to 1e-6): `read_config` returns it as
`layer_norm_eps`.

`hf_names` is the one table of our parameter paths and their HF names: the import here and the export
(`lm.serving.export_hf`) both read it.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm.models import vit
from lm.weights import assign, configuring
from lm.weights.reader import is_hf_directory, read_hf_config, read_state_dict
from lm.weights.report import ImportReport

# HF keys whose value must be one we implement: (key, default, allowed values, why).
_CONFIG_CHECKS = (
    ("model_type", None, ("vit",), "only the ViT architecture maps onto lm.models.vit"),
    ("hidden_act", "gelu", ("gelu",), "our ViT uses the exact (erf) GELU"),
    ("qkv_bias", True, (True,), "our attention projections have biases"),
    ("num_channels", 3, (3,), "our ViT takes RGB images"),
)
# Checkpoint keys that feed nothing of ours by design.
_IGNORED = ("embeddings.mask_token", "pooler.dense.weight", "pooler.dense.bias")


def _has_classifier(hf: dict) -> bool:
    return any(name.endswith("ForImageClassification") for name in hf.get("architectures") or ())


def read_config(path: str) -> dict:
    """config.json of a HF ViT directory -> our vit model-config values.

    Keys: variant, patch_size, image_size, pooling ('cls'), layer_norm_eps, and num_classes when the
    checkpoint is a classifier (`architectures` names a *ForImageClassification).
    """
    file, hf = read_hf_config(path)
    for key, default, allowed, why in _CONFIG_CHECKS:
        if hf.get(key, default) not in allowed:
            raise ValueError(f"{file}: {key}={hf.get(key, default)!r} is not supported ({why}); need {allowed}")
    shape = (hf.get("hidden_size", 768), hf.get("num_hidden_layers", 12), hf.get("num_attention_heads", 12))
    variants = [name for name, size in vit.VIT_SIZES.items() if size == shape]
    if not variants:
        raise ValueError(
            f"{file}: hidden_size/num_hidden_layers/num_attention_heads = {shape} is none of our ViT variants "
            f"{vit.VIT_SIZES}"
        )
    hidden = shape[0]
    if hf.get("intermediate_size", 3072) != 4 * hidden:
        raise ValueError(
            f"{file}: intermediate_size={hf.get('intermediate_size', 3072)} but our ViT's MLP is 4 x hidden_size "
            f"= {4 * hidden}"
        )
    image_size, patch_size = hf.get("image_size", 224), hf.get("patch_size", 16)
    if not isinstance(image_size, int) or not isinstance(patch_size, int) or image_size % patch_size:
        raise ValueError(
            f"{file}: image_size={image_size!r}, patch_size={patch_size!r}: need square sizes with image_size a "
            "multiple of patch_size"
        )
    config = {
        "variant": variants[0],
        "patch_size": patch_size,
        "image_size": image_size,
        "pooling": "cls",
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
    }
    if _has_classifier(hf):
        config["num_classes"] = len(hf["id2label"]) if "id2label" in hf else hf["num_labels"]
    return config


def resample_position_embeddings(
    posemb: np.ndarray | jax.Array,
    new_grid: int | tuple[int, int],
    has_class_token: bool,
    method: str = "bicubic",
) -> np.ndarray:
    """Position embeddings [tokens, hidden] (or [1, tokens, hidden]) for a new square-or-not patch grid.

    The patch part must be a square grid; it is resized in 2-D with `jax.image.resize(method=...)`
    ('bicubic', 'bilinear', ...; antialiased when shrinking). With a class token its embedding is kept
    in front. The result has the input's rank and [1 + gh * gw | gh * gw] tokens.
    """
    posemb = np.asarray(posemb, np.float32)
    batched = posemb.ndim == 3
    tokens = posemb[0] if batched else posemb
    if tokens.ndim != 2:
        raise ValueError(f"position embeddings must be [tokens, hidden] or [1, tokens, hidden], got {posemb.shape}")
    cls, grid = (tokens[:1], tokens[1:]) if has_class_token else (tokens[:0], tokens)
    side = math.isqrt(len(grid))
    if side * side != len(grid):
        raise ValueError(
            f"{len(grid)} patch position embeddings (of {posemb.shape}, class token: {has_class_token}) do not "
            "form a square grid"
        )
    gh, gw = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    hidden = tokens.shape[-1]
    resized = jax.image.resize(jnp.asarray(grid.reshape(side, side, hidden)), (gh, gw, hidden), method=method)
    out = np.concatenate([cls, np.asarray(resized, np.float32).reshape(gh * gw, hidden)], axis=0)
    return out[None] if batched else out


def _dense(ours: assign.Path, hf: str) -> dict[assign.Path, tuple[str, str]]:
    return {ours + ("kernel",): (f"{hf}.weight", "linear"), ours + ("bias",): (f"{hf}.bias", "same")}


def _norm(ours: assign.Path, hf: str) -> dict[assign.Path, tuple[str, str]]:
    return {ours + ("scale",): (f"{hf}.weight", "same"), ours + ("bias",): (f"{hf}.bias", "same")}


def hf_names(num_layers: int) -> dict[assign.Path, tuple[str, str]]:
    """Our ViT parameter path -> (HF name without the `vit.` prefix of task models, `assign.LAYOUTS` entry)."""
    table = {
        ("embedding", "projection", "kernel"): ("embeddings.patch_embeddings.projection.weight", "conv"),
        ("embedding", "projection", "bias"): ("embeddings.patch_embeddings.projection.bias", "same"),
        ("embedding", "position"): ("embeddings.position_embeddings", "position"),
        ("embedding", "cls_token"): ("embeddings.cls_token", "cls_token"),
        **_norm(("norm",), "layernorm"),
        **_dense(("head",), "classifier"),
    }
    for i in range(num_layers):
        ours, hf = ("blocks", i), f"encoder.layer.{i}"
        table.update({
            **_norm(ours + ("attention_norm",), f"{hf}.layernorm_before"),
            **_dense(ours + ("attention", "query"), f"{hf}.attention.attention.query"),
            **_dense(ours + ("attention", "key"), f"{hf}.attention.attention.key"),
            **_dense(ours + ("attention", "value"), f"{hf}.attention.attention.value"),
            **_dense(ours + ("attention", "output"), f"{hf}.attention.output.dense"),
            **_norm(ours + ("mlp_norm",), f"{hf}.layernorm_after"),
            **_dense(ours + ("mlp_in",), f"{hf}.intermediate.dense"),
            **_dense(ours + ("mlp_out",), f"{hf}.output.dense"),
        })
    return table


def _canonical(state_dict: dict[str, np.ndarray]) -> dict[str, str]:
    """Name without the `vit.` prefix of task models -> the checkpoint's own key."""
    return {key.removeprefix("vit."): key for key in state_dict}


def _position_table(
    posemb: np.ndarray, key: str, template: dict, checkpoint_grid: int, notes: list[str]
) -> tuple[str, np.ndarray]:
    """The checkpoint's position embeddings in our layout: class token dropped for 'gap', grid resampled."""
    ours_tokens = template["embedding"]["position"].shape[0]
    has_cls = template["embedding"].get("cls_token") is not None
    tokens = posemb.reshape(posemb.shape[-2], posemb.shape[-1])
    if len(tokens) != checkpoint_grid**2 + 1:
        raise ValueError(
            f"checkpoint {key} has {len(tokens)} tokens; config.json's image_size/patch_size give a "
            f"{checkpoint_grid}x{checkpoint_grid} grid plus the class token"
        )
    if not has_cls:
        tokens = tokens[1:]
        notes.append("class-token position embedding dropped (our pooling is 'gap')")
    side = math.isqrt(ours_tokens - has_cls)
    if side * side != ours_tokens - has_cls:
        raise ValueError(f"our embedding/position has {ours_tokens} tokens, not a square grid")
    if side != checkpoint_grid:
        tokens = resample_position_embeddings(tokens, side, has_cls)
        grids = f"{checkpoint_grid}x{checkpoint_grid} to a {side}x{side}"
        notes.append(f"position embeddings resampled from a {grids} grid")
    return key, tokens


def convert(state_dict: dict[str, np.ndarray], template: dict, checkpoint_grid: int) -> tuple[assign.Table, list]:
    """Our path -> (checkpoint key, value in our layout), for the leaves of `template` the checkpoint has."""
    names = _canonical(state_dict)
    every = hf_names(len(template["blocks"]))
    body = {ours: entry for ours, entry in every.items()
            if ours[0] != "head" and ours[:2] not in (("embedding", "position"), ("embedding", "cls_token"))}
    absent = [hf for hf, _ in body.values() if hf not in names]
    if "embeddings.position_embeddings" not in names:
        absent.append("embeddings.position_embeddings")
    if absent:
        raise ValueError(
            f"the checkpoint lacks {len(absent)} ViT weights for {len(template['blocks'])} layers, e.g. {absent[:3]}; "
            f"its keys look like {sorted(state_dict)[:3]}"
        )
    out: assign.Table = {ours: (names[hf], assign.to_ours(layout, state_dict[names[hf]]))
                         for ours, (hf, layout) in body.items()}
    notes: list[str] = []
    key = names["embeddings.position_embeddings"]
    out[("embedding", "position")] = _position_table(state_dict[key], key, template, checkpoint_grid, notes)
    if template["embedding"].get("cls_token") is not None:
        key = names["embeddings.cls_token"]
        out[("embedding", "cls_token")] = (key, assign.to_ours("cls_token", state_dict[key]))
    if "classifier.weight" in state_dict:
        for ours in (("head", "kernel"), ("head", "bias")):
            hf, layout = every[ours]
            out[ours] = (hf, assign.to_ours(layout, state_dict[hf]))
    else:
        notes.append("the checkpoint has no classifier: our head stays fresh")
    return out, notes


def detect(path: str) -> bool:
    """A Hugging Face directory whose config.json says model_type 'vit'."""
    return is_hf_directory(path) and read_hf_config(path)[1].get("model_type") == "vit"


def configure(config: ml_collections.ConfigDict, path: str) -> None:
    """The directory's ViT architecture into config.model, its preprocessor's normalisation into config.data."""
    configuring.hf_vision(config, path, "vit", read_config(path))


def load(path: str, params: dict, batch_stats: dict | None = None) -> tuple[dict, None, ImportReport]:
    """Our ViT parameters (arrays or ShapeDtypeStructs) with a HF ViT directory's weights.

    Returns (new params, None: ViT has no BatchNorm statistics, report): loaded leaves are host numpy arrays
    in our dtypes; 'new' holds ours kept as they were (e.g. the head when the class count differs), 'notes'
    the resampling and head decisions, 'ignored' the checkpoint keys that feed nothing by design.
    """
    del batch_stats
    config = read_config(path)
    state_dict = read_state_dict(path)
    table, notes = convert(state_dict, params, config["image_size"] // config["patch_size"])
    new, report = assign.fill(params, table, what="ViT parameter", fresh_on_mismatch=(("head",),))
    used = set(report.used)
    report.source = path
    report.notes = notes + report.notes
    report.unused = sorted(key for key in state_dict if key not in used and key.removeprefix("vit.") not in _IGNORED)
    report.ignored = sorted(key for key in state_dict if key.removeprefix("vit.") in _IGNORED)
    return new, None, report
