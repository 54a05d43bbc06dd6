"""Hugging Face BERT directories (config.json, model.safetensors or pytorch_model.bin, vocab.txt) -> our BERT.

`read_config` gives `lm.models.bert.BertConfig` field values, which `configure` writes into a config (with the
vocabulary); `load(path, params, batch_stats)` fills our BERT's parameters (the encoder, and the masked-LM head
where the directory has one; a classifier stays fresh); `load_encoder_params` fills the `params['encoder']`
subtree alone. HF `nn.Linear` weights are [out, in] and ours [in, out], so kernels are transposed. Checkpoints
of `BertModel` (no prefix) and of the task models (`bert.` prefix, e.g. `BertForSequenceClassification`) both
load; TF-era LayerNorm names `gamma`/`beta` are accepted. The pooler is optional: without it ours keeps its
fresh init.
"""

from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from lm.paths import param_name, path_keys
from lm.weights.reader import is_hf_directory, read_hf_config, read_state_dict
from lm.weights.report import ImportReport

# Buffers, not parameters: our model computes them.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta.
_LAYER_NORM_ALIASES = {".LayerNorm.gamma": ".LayerNorm.weight", ".LayerNorm.beta": ".LayerNorm.bias"}
# (our field, HF key, HF default or None when required)
_CONFIG_FIELDS = (
    ("vocab_size", "vocab_size", None),
    ("hidden_size", "hidden_size", None),
    ("num_layers", "num_hidden_layers", None),
    ("num_heads", "num_attention_heads", None),
    ("intermediate_size", "intermediate_size", None),
    ("max_position_embeddings", "max_position_embeddings", 512),
    ("type_vocab_size", "type_vocab_size", 2),
    ("layer_norm_eps", "layer_norm_eps", 1e-12),
    ("dropout_rate", "hidden_dropout_prob", 0.1),
    ("attention_dropout_rate", "attention_probs_dropout_prob", 0.1),
)
# HF keys whose value must be one we implement: (key, default, allowed values, why).
_CONFIG_CHECKS = (
    ("model_type", None, ("bert",), "only the BERT architecture maps onto lm.models.bert"),
    ("hidden_act", "gelu", ("gelu",), "our BERT uses the exact (erf) GELU"),
    ("position_embedding_type", "absolute", ("absolute",), "our BERT has learned absolute positions"),
    ("is_decoder", False, (False,), "our BERT attends bidirectionally"),
)

_Path = tuple[str | int, ...]


def read_config(path: str) -> dict:
    """config.json of a HF BERT directory -> keyword arguments for `BertConfig` (all but `dtype`)."""
    file, hf = read_hf_config(path)
    for key, default, allowed, why in _CONFIG_CHECKS:
        if hf.get(key, default) not in allowed:
            raise ValueError(
                f"{file}: {key}={hf.get(key, default)!r} is not supported ({why}); need {allowed}"
            )
    config = {}
    for ours, key, default in _CONFIG_FIELDS:
        if key not in hf and default is None:
            raise ValueError(f"{file}: required key {key!r} is missing")
        config[ours] = hf.get(key, default)
    if config["hidden_size"] % config["num_heads"]:
        raise ValueError(
            f"{file}: hidden_size {config['hidden_size']} is not divisible by num_attention_heads"
        )
    return config


def vocab_path(path: str) -> str:
    """The WordPiece vocabulary of a HF BERT directory."""
    file = epath.Path(path) / "vocab.txt"
    if not file.is_file():
        raise FileNotFoundError(f"no vocab.txt in {path}")
    return str(file)


def configure(config: ml_collections.ConfigDict, path: str) -> None:
    """The directory's BERT shape (and dropout rates) into config.model; its vocabulary where config.data has none."""
    for key, value in read_config(path).items():
        if key in config.model:
            config.model[key] = type(config.model[key])(value)
    if not config.data.vocab_path:
        config.data.vocab_path = vocab_path(path)


def _dense(ours: _Path, hf: str) -> dict[_Path, tuple[str, bool]]:
    return {ours + ("kernel",): (hf + ".weight", True), ours + ("bias",): (hf + ".bias", False)}


def _norm(ours: _Path, hf: str) -> dict[_Path, tuple[str, bool]]:
    return {ours + ("scale",): (hf + ".weight", False), ours + ("bias",): (hf + ".bias", False)}


def _layer_names(i: int) -> dict[_Path, tuple[str, bool]]:
    ours, hf = ("layers", i), f"encoder.layer.{i}"
    return {
        **_dense(ours + ("attention", "query"), hf + ".attention.self.query"),
        **_dense(ours + ("attention", "key"), hf + ".attention.self.key"),
        **_dense(ours + ("attention", "value"), hf + ".attention.self.value"),
        **_dense(ours + ("attention", "output"), hf + ".attention.output.dense"),
        **_norm(ours + ("attention_norm",), hf + ".attention.output.LayerNorm"),
        **_dense(ours + ("intermediate",), hf + ".intermediate.dense"),
        **_dense(ours + ("output",), hf + ".output.dense"),
        **_norm(ours + ("output_norm",), hf + ".output.LayerNorm"),
    }


def encoder_names(num_layers: int) -> dict[_Path, tuple[str, bool]]:
    """Our encoder parameter path -> (canonical HF name, whether to transpose)."""
    names = {
        ("embeddings", "word", "embedding"): ("embeddings.word_embeddings.weight", False),
        ("embeddings", "position", "embedding"): ("embeddings.position_embeddings.weight", False),
        ("embeddings", "token_type", "embedding"): ("embeddings.token_type_embeddings.weight", False),
        **_norm(("embeddings", "norm"), "embeddings.LayerNorm"),
        **_dense(("pooler",), "pooler.dense"),
    }
    for i in range(num_layers):
        names.update(_layer_names(i))
    return names


def _canonical_names(state_dict: dict[str, np.ndarray]) -> dict[str, str]:
    """Canonical HF name (no `bert.` prefix, LayerNorm weight/bias) -> the checkpoint's own key."""
    prefixed = any(key.startswith("bert.") for key in state_dict)
    names = {}
    for key in state_dict:
        name = key.removeprefix("bert.") if prefixed else key
        for old, new in _LAYER_NORM_ALIASES.items():
            if name.endswith(old):
                name = name.removesuffix(old) + new
        names[name] = key
    return names


def _match(state_dict: dict[str, np.ndarray], num_layers: int) -> dict[_Path, tuple[str, np.ndarray]]:
    """Our path -> (checkpoint key, value in our layout). Everything but the pooler must be present."""
    names = _canonical_names(state_dict)
    table = encoder_names(num_layers)
    absent = [hf for path, (hf, _) in table.items() if hf not in names and path[0] != "pooler"]
    if absent:
        raise ValueError(
            f"the checkpoint lacks {len(absent)} BERT encoder weights for {num_layers} layers, e.g. "
            f"{absent[:3]}; its keys look like {sorted(state_dict)[:3]}. Is num_layers larger than the "
            "checkpoint's, or is it not a BERT checkpoint?"
        )
    matched = {}
    for path, (hf, transpose) in table.items():
        if hf in names:
            value = state_dict[names[hf]]
            matched[path] = (names[hf], np.ascontiguousarray(value.T) if transpose else value)
    return matched


def _nest(flat: dict[_Path, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def convert_encoder(state_dict: dict[str, np.ndarray], num_layers: int) -> dict:
    """HF BERT weights -> our encoder pure dict (`params['encoder']`); no pooler entry if it has none."""
    return _nest({path: value for path, (_, value) in _match(state_dict, num_layers).items()})


def load_encoder_params(path: str, encoder_params: dict, state_dict: dict | None = None) -> tuple[dict, dict]:
    """Replaces our encoder parameters with a HF BERT directory's weights.

    `encoder_params` is `params['encoder']` (arrays or `jax.ShapeDtypeStruct`s). Returns the new dict, of
    the same structure, with loaded leaves as host numpy arrays in our leaves' dtypes, and an `ImportReport`:
    'loaded', 'new' (our paths kept as they were) and 'unused' (checkpoint keys that fed nothing, e.g. task
    heads; buffers such as position_ids are left out).
    `state_dict`: the directory's weights if the caller has already read them (`read_state_dict`).
    """
    state_dict = read_state_dict(path) if state_dict is None else state_dict
    matched = _match(state_dict, len(encoder_params["layers"]))
    report = ImportReport(source=path)
    used = {name for hf, name in _canonical_names(state_dict).items() if hf in _BUFFERS}

    def replace(keypath: tuple, leaf: Any) -> Any:
        ours = path_keys(keypath)
        if ours not in matched:
            report.new.append(param_name(ours))
            return leaf
        key, value = matched[ours]
        _check_shape(ours, leaf, key, value)
        report.loaded.append(param_name(ours))
        used.add(key)
        return value.astype(leaf.dtype)

    new_params = jax.tree_util.tree_map_with_path(replace, encoder_params)
    report.used = sorted(used)
    report.unused = sorted(key for key in state_dict if key not in used)
    return new_params, report


# Our masked-LM head (`lm.models.bert.BertMaskedLMHead`) -> (canonical HF name, transpose). The decoder weight
# is tied to the word embeddings, so it has no entry of its own.
MLM_HEAD_NAMES = {
    **_dense(("transform",), "cls.predictions.transform.dense"),
    **_norm(("norm",), "cls.predictions.transform.LayerNorm"),
    ("bias",): ("cls.predictions.bias", False),
}


def load_mlm_head_params(path: str, head_params: dict, state_dict: dict | None = None) -> tuple[dict, dict]:
    """Our `params['mlm_head']` with a HF directory's `cls.predictions.*` weights (BertForMaskedLM, BertForPreTraining).

    A directory without them (a plain BertModel) leaves the head fresh: all of it is reported 'new'.
    Partial heads are an error. Returns (new head params, `ImportReport` with 'loaded', 'new' and 'used').
    `state_dict` as in `load_encoder_params`.
    """
    state_dict = read_state_dict(path) if state_dict is None else state_dict
    names = _canonical_names(state_dict)
    present = [hf for hf, _ in MLM_HEAD_NAMES.values() if hf in names]
    if not present:
        return head_params, ImportReport(source=path, new=[param_name(("mlm_head",) + p) for p in MLM_HEAD_NAMES])
    absent = [hf for hf, _ in MLM_HEAD_NAMES.values() if hf not in names]
    if absent:
        raise ValueError(f"{path}: the masked-LM head is incomplete: it has {present} but lacks {absent}.")
    flat = {}
    for ours, (hf, transpose) in MLM_HEAD_NAMES.items():
        value = state_dict[names[hf]]
        value = np.ascontiguousarray(value.T) if transpose else value
        leaf = head_params
        for key in ours:
            leaf = leaf[key]
        _check_shape(("mlm_head",) + ours, leaf, names[hf], value)
        flat[ours] = value.astype(leaf.dtype)
    return _nest(flat), ImportReport(source=path, loaded=[param_name(("mlm_head",) + p) for p in MLM_HEAD_NAMES],
                                     used=[names[hf] for hf, _ in MLM_HEAD_NAMES.values()])


def _check_shape(ours: _Path, leaf: Any, key: str, value: np.ndarray) -> None:
    if value.shape != tuple(np.shape(leaf)):
        raise ValueError(
            f"shape mismatch: our encoder parameter {param_name(ours)} has shape {tuple(np.shape(leaf))}, "
            f"checkpoint key {key} gives {value.shape} (after transposing HF Linear [out, in] to our [in, out] "
            "where it applies); the config does not match the checkpoint"
        )


def detect(path: str) -> bool:
    """A Hugging Face directory (the other HF importers claim theirs first, by config.json's model_type)."""
    return is_hf_directory(path)


def load(path: str, params: dict, batch_stats: dict | None = None) -> tuple[dict, None, ImportReport]:
    """Our BERT (`BertClassifier` or `BertForMaskedLM`) parameters with a HF BERT directory's weights.

    The encoder loads; `mlm_head` loads from `cls.predictions.*` where the directory has it; a classifier stays
    fresh. BERT has no BatchNorm statistics: the second value is None.
    """
    del batch_stats
    state_dict = read_state_dict(path)  # Read once: the encoder and the masked-LM head share it.
    encoder, report = load_encoder_params(path, params["encoder"], state_dict)
    new = dict(params, encoder=encoder)
    if "mlm_head" in params:
        new["mlm_head"], head = load_mlm_head_params(path, params["mlm_head"], state_dict)
        report.loaded += head.loaded
        report.new += head.new
        report.unused = [key for key in report.unused if not key.startswith("cls.predictions.")]
    else:
        report.new += ["classifier/" + key for key in params["classifier"]]
    report.new = sorted(set(report.new))
    return new, None, report
