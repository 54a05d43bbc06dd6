"""`config.model.remat`: the same loss, gradients and BatchNorm statistics as without it, and far less kept
for the backward pass with `full`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vision_models
from lm import state as state_lib
from lm.models import create_model
from tests import model_steps


def _gradients(model_config, inputs: tuple, remat: str):
    """Loss, gradients and BatchNorm statistics of one training-mode forward and backward pass (dropout on)."""
    model_config = model_config.copy_and_resolve_references()
    model_config.remat = remat
    graphdef, params, batch_stats = state_lib.split_model(create_model(model_config, rngs=nnx.Rngs(0)))
    # Zero-initialised heads and residual scales would leave gradients of zero below them: perturb every parameter.
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape), params)

    def loss_fn(params):
        model = state_lib.merge_model(graphdef, params, batch_stats)
        logits = model(*inputs, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.key(1)))
        return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    return loss, grads, stats


def _text_inputs():
    batch = model_steps.text_batch(0, batch_size=4)
    return batch["input_ids"], batch["attention_mask"]


def _image_inputs():
    return (model_steps.image_batch(0, batch_size=4)["image"],)


CASES = {
    "bert": (lambda: model_steps.bert_config().model, _text_inputs),
    "vit": (lambda: model_steps.vision_config("vit_test", dropout_rate=0.1, attention_dropout_rate=0.1).model,
            _image_inputs),
    "resnet": (lambda: model_steps.vision_config("resnet_small").model, _image_inputs),
}


@pytest.mark.parametrize("name, remat", [
    ("bert", "full"), ("bert", "dots_saveable"), ("vit", "full"),
    pytest.param("resnet", "full", marks=pytest.mark.slow),
])
def test_remat_gives_the_same_gradients(name, remat, monkeypatch):
    model_steps.use_test_vit(monkeypatch)
    config, inputs = CASES[name]
    reference = _gradients(config(), inputs(), "none")
    rematerialised = _gradients(config(), inputs(), remat)
    for expected, actual in zip(jax.tree.leaves(reference), jax.tree.leaves(rematerialised), strict=True):
        # Relative to the leaf's largest value: recomputing sums in another order moves a small element of a
        # large leaf by float32 rounding of the large ones (ViT's position gradient used 87% of an element-wise
        # rtol=1e-5 on one CPU). A wrong recompute (another dropout mask) is off by the gradient's own size.
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale + 1e-7)
    assert all(float(jnp.abs(grad).sum()) > 0 for grad in jax.tree.leaves(reference[1]))  # None is trivially 0.


def _saved_bytes(remat: str) -> int:
    """Bytes the backward pass of a 4-layer BERT (batch 16 x 64 tokens) keeps from its forward pass."""
    config = model_steps.bert_config(remat=remat, num_layers=4).model
    graphdef, params, batch_stats = state_lib.split_model(create_model(config, rngs=nnx.Rngs(0)))
    batch = model_steps.text_batch(0, batch_size=16, length=64)

    def loss_fn(params):
        model = state_lib.merge_model(graphdef, params, batch_stats)
        logits = model(batch["input_ids"], batch["attention_mask"], deterministic=False,
                       rngs=nnx.Rngs(dropout=jax.random.key(1)))
        return jnp.mean(logits)

    residuals = jax.eval_shape(lambda p: jax.tree.leaves(jax.vjp(loss_fn, p)[1]), params)
    return sum(r.size * r.dtype.itemsize for r in residuals)


def test_full_remat_keeps_less_for_the_backward_pass():
    """What the backward pass keeps (the vjp's residuals). XLA's compiled memory follows it on accelerators;
    XLA:CPU's scheduler runs the recomputation early, so there the compiled step's memory barely moves."""
    none, full = _saved_bytes("none"), _saved_bytes("full")
    assert full < 0.25 * none, (full, none)


def test_unknown_remat_is_refused():
    config = vision_models.vision_model_config("resnet", depth=18, width=8, remat="some")
    with pytest.raises(ValueError, match="config.model.remat='some' is not known; use one of none, full"):
        create_model(config, rngs=nnx.Rngs(0))
