"""Hugging Face BERT import: parity with transformers' BertModel, torch-free .bin reading, clear errors."""

import json
import os
import pathlib
import pickle
import shutil
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from lm.models import bert
from lm.weights import hf_bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # fp32; measured ~3e-6 on MiniLM
BATCH, LENGTH = 3, 32


def _abstract_encoder(config: bert.BertConfig) -> bert.BertEncoder:
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: bert.BertEncoder(config, rngs=nnx.Rngs(0)))


def _abstract_params(config: bert.BertConfig) -> dict:
    return nnx.to_pure_dict(nnx.state(_abstract_encoder(config), nnx.Param))


def _load_encoder(path: pathlib.Path) -> tuple[bert.BertEncoder, dict]:
    """Our encoder with the directory's weights, built without a random init (every leaf is loaded)."""
    graphdef, state = nnx.split(_abstract_encoder(bert.BertConfig(**hf_bert.read_config(str(path)))))
    params, report = hf_bert.load_encoder_params(str(path), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state), report


@nnx.jit
def _forward(model, input_ids, attention_mask, token_type_ids):
    return model(input_ids, attention_mask, token_type_ids, deterministic=True)


def _batches(vocab_size: int, type_vocab_size: int, count: int = 3):
    """Token ids with [CLS] first and right padding (id 0, mask 0) of varied lengths; one full row."""
    rng = np.random.default_rng(0)
    for _ in range(count):
        lengths = rng.integers(2, LENGTH + 1, BATCH)
        lengths[0] = LENGTH
        mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64)
        ids = rng.integers(1, vocab_size, (BATCH, LENGTH))
        ids[:, 0] = min(101, vocab_size - 1)
        yield ids * mask, mask, rng.integers(0, type_vocab_size, (BATCH, LENGTH)) * mask


def _max_differences(ours: bert.BertEncoder, reference, vocab_size: int, type_vocab_size: int) -> dict:
    worst = {"real positions": 0.0, "all positions": 0.0, "pooled": 0.0}
    for ids, mask, token_types in _batches(vocab_size, type_vocab_size):
        hidden, pooled = (np.asarray(x) for x in _forward(ours, ids, mask, token_types))
        with torch.no_grad():
            out = reference(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(token_types),
            )
        difference = np.abs(hidden - out.last_hidden_state.numpy())
        worst["real positions"] = max(worst["real positions"], float(difference[mask.astype(bool)].max()))
        worst["all positions"] = max(worst["all positions"], float(difference.max()))
        worst["pooled"] = max(worst["pooled"], float(np.abs(pooled - out.pooler_output.numpy()).max()))
    return worst


@pytest.fixture(scope="module")
def tiny_bin(tmp_path_factory) -> tuple[pathlib.Path, "torch.nn.Module"]:
    """A small random transformers BertModel saved as pytorch_model.bin (no safetensors)."""
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=3,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # LayerNorms start at 1/0: make every tensor distinct
            parameter.add_(0.1 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("tiny_bert_bin")
    model.save_pretrained(path, safe_serialization=False)
    return path, model


def test_minilm_matches_transformers(minilm_dir):
    ours, report = _load_encoder(minilm_dir)
    assert report["missing"] == [] and report["unused"] == []
    assert len(report["loaded"]) == 5 + 6 * 16 + 2
    reference = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    config = reference.config
    worst = _max_differences(ours, reference, config.vocab_size, config.type_vocab_size)
    assert worst["real positions"] <= TOLERANCE and worst["pooled"] <= TOLERANCE, worst


def test_bin_is_read_without_torch_and_matches(tiny_bin):
    path, reference = tiny_bin
    assert (path / "pytorch_model.bin").is_file() and not (path / "model.safetensors").exists()
    ours = hf_bert.read_state_dict(str(path))
    expected = torch.load(path / "pytorch_model.bin", weights_only=True)
    assert sorted(ours) == sorted(expected)
    for key, tensor in expected.items():
        assert ours[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)
    encoder, report = _load_encoder(path)
    assert report["missing"] == [] and report["unused"] == []
    worst = _max_differences(
        encoder, reference, reference.config.vocab_size, reference.config.type_vocab_size
    )
    assert worst["real positions"] <= TOLERANCE and worst["pooled"] <= TOLERANCE, worst


def test_torch_pickle_dtypes_and_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    tensors = {
        "float32": base,
        "transposed": base.T,
        "offset_view": base[1:, 2:5],
        "float16": base.half(),
        "bfloat16": base.bfloat16(),
        "float64": base.double(),
        "int64": torch.arange(-3, 5),
        "bool": base > 1,
        "scalar": torch.tensor(2.5),
    }
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    ours = hf_bert.read_state_dict(str(tmp_path))
    assert ours["bfloat16"].dtype == ml_dtypes.bfloat16
    for key, tensor in tensors.items():
        expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert ours[key].shape == expected.shape, key
        np.testing.assert_array_equal(ours[key].astype(expected.dtype), expected, err_msg=key)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must not run",))


def test_torch_pickle_refuses_code_and_legacy_files(tmp_path):
    with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": _RunsCode()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global .*system"):
        hf_bert.read_state_dict(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": 1}))
    with pytest.raises(ValueError, match="not a torch zip checkpoint"):
        hf_bert.read_state_dict(str(tmp_path))


def test_shape_mismatch_names_both_sides(tiny_bin):
    path, _ = tiny_bin
    params = _abstract_params(bert.BertConfig(**hf_bert.read_config(str(path))))
    params["layers"][0]["intermediate"]["kernel"] = jax.ShapeDtypeStruct((32, 40), np.float32)
    with pytest.raises(ValueError) as error:
        hf_bert.load_encoder_params(str(path), params)
    message = str(error.value)
    for part in (
        "layers/0/intermediate/kernel",
        "(32, 40)",
        "encoder.layer.0.intermediate.dense.weight",
        "(32, 37)",
    ):
        assert part in message, message


def test_task_checkpoint_names_and_missing_pooler(tiny_bin, tmp_path):
    """`bert.` prefix and gamma/beta LayerNorms load; no pooler keeps ours; task heads are reported unused."""
    path, _ = tiny_bin
    state_dict = hf_bert.read_state_dict(str(path))
    renamed = {
        "bert."
        + key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): value
        for key, value in state_dict.items()
        if not key.startswith("pooler.")
    }
    renamed["classifier.weight"] = np.zeros((2, 32), np.float32)
    safetensors.numpy.save_file(renamed, str(tmp_path / "model.safetensors"))
    shutil.copy(path / "config.json", tmp_path / "config.json")
    params = _abstract_params(bert.BertConfig(**hf_bert.read_config(str(tmp_path))))
    loaded, report = hf_bert.load_encoder_params(str(tmp_path), params)
    assert report["missing"] == ["pooler/bias", "pooler/kernel"]
    assert report["unused"] == ["classifier.weight"]
    assert loaded["pooler"]["kernel"] is params["pooler"]["kernel"]
    expected = hf_bert.convert_encoder(state_dict, num_layers=2)
    np.testing.assert_array_equal(
        loaded["layers"][1]["output_norm"]["scale"], expected["layers"][1]["output_norm"]["scale"]
    )
    np.testing.assert_array_equal(
        loaded["layers"][0]["attention"]["query"]["kernel"],
        state_dict["encoder.layer.0.attention.self.query.weight"].T,
    )
    with pytest.raises(ValueError, match="lacks .* BERT encoder weights for 3 layers"):
        hf_bert.convert_encoder(state_dict, num_layers=3)


@pytest.mark.parametrize(
    "key, value",
    [("model_type", "roberta"), ("hidden_act", "gelu_new"), ("position_embedding_type", "relative_key")],
)
def test_unsupported_config_is_refused(minilm_dir, tmp_path, key, value):
    config = json.loads((minilm_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=f"config.json: {key}="):
        hf_bert.read_config(str(tmp_path))


def test_config_vocab_and_missing_files(minilm_dir, tmp_path):
    config = hf_bert.read_config(str(minilm_dir))
    assert (config["num_layers"], config["hidden_size"], config["num_heads"]) == (6, 384, 12)
    assert config["dropout_rate"] == 0.1 and config["layer_norm_eps"] == 1e-12
    assert hf_bert.vocab_path(str(minilm_dir)).endswith("vocab.txt")
    with pytest.raises(FileNotFoundError, match="model.safetensors, pytorch_model.bin"):
        hf_bert.read_state_dict(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        hf_bert.vocab_path(str(tmp_path))


def test_safetensors_bfloat16(tmp_path):
    import safetensors.torch

    weights = {"w": (torch.arange(6, dtype=torch.float32) / 3).bfloat16(), "b": torch.ones(2)}
    safetensors.torch.save_file(weights, str(tmp_path / "model.safetensors"))
    ours = hf_bert.read_state_dict(str(tmp_path))
    assert ours["w"].dtype == ml_dtypes.bfloat16 and ours["b"].dtype == np.float32
    np.testing.assert_array_equal(ours["w"].astype(np.float32), weights["w"].float().numpy())
