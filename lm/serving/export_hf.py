"""--mode=export_hf: a checkpoint of ours -> a Hugging Face model directory that `from_pretrained` loads.

BERT becomes `BertForSequenceClassification`: config.json, model.safetensors (the encoder under `bert.`,
then `classifier`), vocab.txt and tokenizer_config.json. ViT (class-token pooling) becomes
`ViTForImageClassification`: config.json and model.safetensors; it takes `pixel_values` [batch, 3, H, W]
normalised as our pipeline normalised them (config.data.mean and std). Weights are float32; our [in, out]
kernels become PyTorch's [out, in], convolution kernels [h, w, in, out] become [out, in, h, w]. Every
parameter of ours must have a Hugging Face name: an unmapped one is an error, never silently dropped.
The name tables are the importers' (`lm.weights.hf_bert.encoder_names`, `lm.weights.hf_vit.hf_names`).

A model family names its exporter (`lm.models.ModelFamily.exporter`); `register_exporter` adds one.
"""

import logging
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import safetensors.numpy

from lm import checkpointing, config_checks, distributed, evaluate, files, models, paths
from lm.models import vit
from lm.weights import assign, hf_bert, hf_vit

log = logging.getLogger(__name__)

_Table = dict[str, tuple[str, str]]  # our '/'-joined path -> (HF name, `assign.LAYOUTS` entry)


def _bert_names(num_layers: int) -> _Table:
    table = {"encoder/" + paths.param_name(path): ("bert." + hf, "linear" if transpose else "same")
             for path, (hf, transpose) in hf_bert.encoder_names(num_layers).items()}
    head = {"classifier/kernel": ("classifier.weight", "linear"), "classifier/bias": ("classifier.bias", "same")}
    return {**table, **head}


def _vit_names(num_layers: int) -> _Table:
    return {paths.param_name(path): (hf if path[0] == "head" else "vit." + hf, layout)
            for path, (hf, layout) in hf_vit.hf_names(num_layers).items()}


def _to_hf(params, table: _Table, family: str) -> dict[str, np.ndarray]:
    flat = {name: np.asarray(leaf) for name, leaf in paths.flatten(jax.device_get(params)).items()}
    unmapped, absent = sorted(set(flat) - set(table)), sorted(set(table) - set(flat))
    if unmapped or absent:
        raise ValueError(
            f"the {family} parameters do not match the Hugging Face layout: {len(unmapped)} of ours have no "
            f"name ({unmapped[:3]}), {len(absent)} names have no parameter ({absent[:3]}). Was the checkpoint "
            "written by another model config?"
        )
    return {hf: np.ascontiguousarray(assign.to_torch(layout, flat[ours]), dtype=np.float32)
            for ours, (hf, layout) in table.items()}


def _labels(label_names, num_classes: int) -> dict:
    names = list(label_names) if len(label_names) == num_classes else [f"LABEL_{i}" for i in range(num_classes)]
    return {"id2label": {str(i): name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)},
            "problem_type": "single_label_classification"}


def _write(directory: str, hf_config: dict, tensors: dict[str, np.ndarray]) -> None:
    files.makedirs(directory)
    files.write_json(files.join(directory, "config.json"), hf_config)
    files.write_bytes(files.join(directory, "model.safetensors"),
                      safetensors.numpy.save(tensors, metadata={"format": "pt"}))


def write_bert(params, model: ml_collections.ConfigDict, directory: str, *, label_names=(), vocab_path: str = "",
               lowercase: bool = True) -> None:
    """Our BertClassifier parameters -> a `BertForSequenceClassification` directory (with vocab.txt if given)."""
    tensors = _to_hf(params, _bert_names(model.num_layers), "BERT")
    word = tensors["bert.embeddings.word_embeddings.weight"]
    num_classes = tensors["classifier.weight"].shape[0]
    hf_config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": word.shape[0],
        "hidden_size": word.shape[1],
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "intermediate_size": tensors["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "hidden_act": "gelu",
        "hidden_dropout_prob": model.dropout_rate,
        "attention_probs_dropout_prob": model.attention_dropout_rate,
        "max_position_embeddings": tensors["bert.embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": tensors["bert.embeddings.token_type_embeddings.weight"].shape[0],
        "initializer_range": 0.02,
        "layer_norm_eps": model.layer_norm_eps,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        **_labels(label_names, num_classes),
    }
    _write(directory, hf_config, tensors)
    if vocab_path:
        files.copy(vocab_path, files.join(directory, "vocab.txt"))
        tokenizer = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
                     "model_max_length": hf_config["max_position_embeddings"]}
        files.write_json(files.join(directory, "tokenizer_config.json"), tokenizer)


def write_vit(params, model: ml_collections.ConfigDict, directory: str, *, label_names=()) -> None:
    """Our VisionTransformer parameters -> a `ViTForImageClassification` directory."""
    if model.pooling != "cls":
        raise ValueError(
            f"config.model.pooling={model.pooling!r}: Hugging Face's ViTForImageClassification classifies the "
            "class token, so only pooling='cls' exports."
        )
    hidden, num_layers, num_heads = vit.VIT_SIZES[model.variant]
    tensors = _to_hf(params, _vit_names(num_layers), "ViT")
    hf_config = {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": 4 * hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": model.dropout_rate,
        "attention_probs_dropout_prob": model.attention_dropout_rate,
        "initializer_range": 0.02,
        "layer_norm_eps": vit.ViTConfig.layer_norm_eps,
        "image_size": model.image_size,
        "patch_size": model.patch_size,
        "num_channels": 3,
        "qkv_bias": True,
        "encoder_stride": model.patch_size,
        "torch_dtype": "float32",
        **_labels(label_names, tensors["classifier.weight"].shape[0]),
    }
    _write(directory, hf_config, tensors)


def _run_data(workdir: str) -> dict:
    """The `data` section of the run's WORKDIR/config.json, or {} without one; without `label_names` there, the
    class names training recorded in WORKDIR/serving_facts.json (an image run's: its config has no such key)."""
    data = dict((files.read_run_config(workdir, missing_ok=True) or {}).get("data", {}))
    facts = files.join(workdir, files.SERVING_FACTS)
    if not data.get("label_names") and files.exists(facts):
        data["label_names"] = files.read_json(facts).get("label_names", ())
    return data


def _export_bert(params, model, directory: str, config: ml_collections.ConfigDict, run: dict) -> None:
    """vocab_path and label_names from --config, else from the run's config.json; lowercase from --config."""
    vocab_path = config.data.vocab_path or run.get("vocab_path", "")
    if not vocab_path:
        log.warning("No config.data.vocab_path: the export has no vocab.txt, so no tokenizer loads from it.")
    write_bert(params, model, directory, label_names=tuple(config.data.label_names or run.get("label_names", ())),
               vocab_path=vocab_path, lowercase=config.data.lowercase)


def _export_vit(params, model, directory: str, config: ml_collections.ConfigDict, run: dict) -> None:
    write_vit(params, model, directory, label_names=tuple(run.get("label_names", ())))


Exporter = Callable[[dict, ml_collections.ConfigDict, str, ml_collections.ConfigDict, dict], None]
_EXPORTERS: dict[str, Exporter] = {"bert": _export_bert, "vit": _export_vit}


def register_exporter(name: str, exporter: Exporter) -> None:
    """Adds an exporter that a family names: (params, model config, directory, config, the run's data dict)."""
    _EXPORTERS[name] = exporter


def export(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes checkpoint `config.eval_checkpoint` (best | latest | a step) of `workdir` to `config.export_dir`.

    The model's shape comes from the checkpoint; the vocabulary and label names from `config.data`, or from
    the run's WORKDIR/config.json where `config` leaves them empty (an image run's class names: from
    WORKDIR/serving_facts.json).
    """
    config = config_checks.resolved_copy(config)
    family = models.model_family(config.model)
    if family.exporter not in _EXPORTERS:
        exportable = [name for name, known in models.families().items() if known.exporter in _EXPORTERS]
        raise ValueError(
            f"--mode=export_hf exports {exportable}; config.model.name={config.model.name!r} has no Hugging Face "
            "counterpart here."
        )
    if family.head_name(config.model) != family.classifier_head:
        raise ValueError(
            f"--mode=export_hf exports classifiers; config.task={config.task!r}. Fine-tune from this workdir "
            "(a classification config with --config.init_from=WORKDIR) and export that run."
        )
    if config.export_dir and files.is_dir(files.join(config.export_dir, "checkpoints")):
        raise ValueError(f"config.export_dir={config.export_dir!r} is a training workdir (it holds checkpoints/): "
                         "the export would overwrite its config.json. Give a new directory, e.g. WORKDIR/hf_export.")
    ckpt_dir = checkpointing.checkpoint_dir(workdir)
    if not files.is_dir(ckpt_dir):
        raise FileNotFoundError(f"--workdir={workdir!r} has no checkpoints/ directory; train there first.")
    directory = config.export_dir or files.join(workdir, "hf_export")
    with checkpointing.Checkpointer(ckpt_dir, read_only=True, best_metric=config.best_metric,
                                    best_mode=config.best_mode) as checkpointer:
        step = evaluate.select_step(checkpointer, str(config.eval_checkpoint))
        # Checked by the process that writes it, before the checkpoint is restored; a failure stops every process.
        distributed.on_process_zero(
            lambda: files.check_writable(directory, files.setting("config.export_dir", config.export_dir, directory),
                                         "Set --config.export_dir to a directory you can write (a missing one is "
                                         "created; the files of an earlier export there are replaced).",
                                         directory=True),
            "check config.export_dir", config.distributed.process_zero_timeout_s)
        state, meta = checkpointer.restore_raw(step)
    model = ml_collections.ConfigDict(meta["model"])  # The shape the weights were trained with.
    distributed.on_process_zero(
        lambda: _EXPORTERS[family.exporter](state["params"], model, directory, config, _run_data(workdir)),
        "write the Hugging Face export", config.distributed.process_zero_timeout_s)
    log.info("Exported step %d of %s as a Hugging Face %s directory: %s", step, workdir, model.name, directory)
    return directory
