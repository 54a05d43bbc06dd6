"""Tensor parallelism (Megatron-style: attention heads and MLP over the `tensor` mesh axis, through the logical
axis rules): a data x fsdp x tensor = 2 x 2 x 2 mesh trains BERT and ViT with one device's losses."""

import jax
import numpy as np
import pytest

from tests import model_steps

STEPS = 3


def _config(family: str, **mesh):
    if family == "bert":
        config = model_steps.bert_config(dropout_rate=0.0, attention_dropout_rate=0.0)
    else:
        config = model_steps.vision_config("vit_test", dropout_rate=0.0)
    config.mesh.update(mesh)
    return config


def _batches(family: str) -> list[dict]:
    make = model_steps.text_batch if family == "bert" else model_steps.image_batch
    return [make(seed) for seed in range(STEPS)]


# (path of a kernel in the parameters, its PartitionSpec on the 2 x 2 x 2 mesh): q/k/v split by heads, the
# attention output by its input (heads); MLP in by its output, MLP out by its input; `embed` over fsdp.
SHARDED = {
    "bert": [(("encoder", "layers", 0, "attention", name, "kernel"), ("fsdp", "tensor"))
             for name in ("query", "key", "value")] + [
        (("encoder", "layers", 0, "attention", "output", "kernel"), ("tensor", "fsdp")),
        (("encoder", "layers", 1, "intermediate", "kernel"), ("fsdp", "tensor")),
        (("encoder", "layers", 1, "output", "kernel"), ("tensor", "fsdp")),
    ],
    "vit": [(("blocks", 0, "attention", name, "kernel"), ("fsdp", "tensor")) for name in ("query", "key", "value")] + [
        (("blocks", 0, "attention", "output", "kernel"), ("tensor", "fsdp")),
        (("blocks", 1, "mlp_in", "kernel"), ("fsdp", "tensor")),
        (("blocks", 1, "mlp_out", "kernel"), ("tensor", "fsdp")),
    ],
}


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize("family", ["bert", pytest.param("vit", marks=pytest.mark.slow)])
def test_tensor_parallel_losses_match_one_device(family, monkeypatch):
    model_steps.use_test_vit(monkeypatch)
    batches = _batches(family)
    single, _, _ = model_steps.train_losses(
        model_steps.experiment_for(_config(family, data=1), jax.devices()[:1]), batches)
    exp = model_steps.experiment_for(_config(family, data=2, fsdp=2, tensor=2))
    assert dict(exp.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    parallel, state, compiled = model_steps.train_losses(exp, batches)
    assert single[0] != single[-1]  # The steps really train.
    np.testing.assert_allclose(parallel, single, rtol=1e-5, atol=1e-5)

    # The compiled program takes (and returns) the attention and MLP kernels split over `tensor`.
    compiled_params = compiled.input_shardings[0][0]["params"]
    hlo = compiled.as_text()
    for path, spec in SHARDED[family]:
        kernel = _at(state["params"], path)
        assert tuple(kernel.sharding.spec) == spec, path
        assert tuple(_at(compiled_params, path).spec) == spec, path
        rows, cols = kernel.shape
        assert kernel.addressable_shards[0].data.shape == (rows // 2, cols // 2)
        assert f"f32[{rows // 2},{cols // 2}]" in hlo  # Each device's program holds its quarter.
