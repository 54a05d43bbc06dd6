"""How the train step skips a non-finite step (lm.train.make_train_step): a `lax.cond` branch on CPU, an
elementwise choice elsewhere. Both keep every value of a NaN step and give the same update on a finite one;
the branch is what spares XLA:CPU a copy of the optimizer state each step."""

import re

import jax
import numpy as np
import pytest

from lm import experiment, sharding, train
from tests import model_steps


def _states(exp, branch: bool, batches) -> list:
    """The state before and after each step; step 1's gradients are NaN."""
    step = jax.jit(train.make_train_step(exp.spec.graphdef, exp.task, exp.tx, exp.spec.trainable,
                                         nan_steps=(1,), skip_with_branch=branch), donate_argnums=0)
    state = experiment.initial_state(exp)
    states = [jax.device_get(state)]
    with jax.set_mesh(exp.mesh):
        for batch in batches:
            state, metrics = step(state, sharding.global_batch(batch, exp.mesh))
            states.append(jax.device_get(state))
    return states


@pytest.mark.parametrize("family", ["bert", "resnet_small"])
def test_branch_and_elementwise_choice_skip_the_same_steps(family):
    if family == "bert":
        config, batches = model_steps.bert_config(), [model_steps.text_batch(seed) for seed in range(3)]
    else:  # BatchNorm statistics must be kept on the skipped step too.
        config, batches = model_steps.vision_config(family), [model_steps.image_batch(seed) for seed in range(3)]
    exp = model_steps.experiment_for(config, jax.devices()[:1])
    runs = {branch: _states(exp, branch, batches) for branch in (True, False)}
    for states in runs.values():
        for key in ("params", "opt_state", "batch_stats"):  # Step 1 had NaN gradients: nothing moved ...
            jax.tree.map(np.testing.assert_array_equal, states[0][key], states[1][key])
        assert int(states[1]["step"]) == 1
        changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[1]["params"]),
                                                            jax.tree.leaves(states[3]["params"]))]
        assert all(changed)  # ... and the finite steps after it update every parameter.
    for with_branch, elementwise in zip(*runs.values()):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), with_branch, elementwise)


def test_branch_spares_copies_of_the_optimizer_state():
    """Choosing elementwise between new and old values, XLA:CPU copies each donated optimizer-state leaf (the
    old value must outlive its buffer's in-place update); inside the branch it does not."""
    exp = model_steps.experiment_for(model_steps.bert_config(), jax.devices()[:1])
    batch = model_steps.text_batch(0)
    state = experiment.initial_state(exp)
    copies = {}
    for branch in (True, False):
        step = jax.jit(train.make_train_step(exp.spec.graphdef, exp.task, exp.tx, exp.spec.trainable,
                                             skip_with_branch=branch), donate_argnums=0)
        with jax.set_mesh(exp.mesh):
            hlo = step.lower(state, sharding.global_batch(batch, exp.mesh)).compile().as_text()
        copies[branch] = len(re.findall(r"= f32\[[\d,]+\]\{[\d,]*\} copy\(%?state\w*opt_state", hlo))
    assert copies[False] > 0  # Copies of mu and nu leaves without the branch (today: of nearly every one) ...
    assert copies[True] == 0, copies  # ... and none with it.
