"""LAMB and LARS (config.optimizer.name): built from config, they step, and the weight-decay mask holds."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common, vision_pretrain
from lm import optimizers


def _optimizer_config(name: str) -> ml_collections.ConfigDict:
    opt = common.training_defaults().optimizer
    opt.update(name=name, learning_rate=0.1, weight_decay=0.1, warmup_steps=0, schedule="constant", clip_norm=0.0)
    return opt


def _params() -> dict:
    key1, key2 = jax.random.split(jax.random.key(0))
    return {"dense": {"kernel": jax.random.normal(key1, (8, 4)), "bias": jnp.ones((4,))},
            "layer_norm": {"scale": jnp.ones((4,))}, "embed": jax.random.normal(key2, (16, 8))}


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_large_batch_optimizer_steps(name):
    tx, _ = optimizers.create_optimizer(_optimizer_config(name), total_steps=10)
    params = _params()
    state = tx.init(params)
    loss = lambda p: jnp.sum((p["embed"] @ p["dense"]["kernel"] + p["dense"]["bias"]) ** 2 * p["layer_norm"]["scale"])  # noqa: E731
    losses = []
    for _ in range(3):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(value))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_weight_decay_only_where_the_mask_says(name):
    """With zero gradients only weight decay moves a parameter: matrices and embeddings move, biases and norms not."""
    tx, _ = optimizers.create_optimizer(_optimizer_config(name), total_steps=10)
    params = _params()
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert moved == {"dense": {"kernel": True, "bias": False}, "layer_norm": {"scale": False}, "embed": True}


def test_lars_trust_ratio_scales_matrices_only():
    """LARS: a matrix's step is trust_coefficient x |w| / |g| times the gradient; a bias takes the plain SGD step."""
    opt = _optimizer_config("lars")
    opt.update(weight_decay=0.0, momentum=0.0)
    tx, _ = optimizers.create_optimizer(opt, total_steps=10)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    kernel, grad = params["dense"]["kernel"], grads["dense"]["kernel"]
    ratio = opt.trust_coefficient * jnp.linalg.norm(kernel) / jnp.linalg.norm(grad)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * ratio * grad, rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["bias"], -0.1 * grads["dense"]["bias"], rtol=1e-6)


def test_simclr_config_uses_lars():
    config = vision_pretrain.get_config("resnet50,imagenet2012")
    assert config.optimizer.name == "lars"
    assert config.optimizer.learning_rate == pytest.approx(0.3 * 4096 / 256)


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match="'lamb' or 'lars'"):
        optimizers.create_optimizer(_optimizer_config("adafactor"), total_steps=10)
