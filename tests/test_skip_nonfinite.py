"""How the train step skips a non-finite step (lm.train.make_train_step): a `lax.cond` branch on CPU, an
elementwise choice elsewhere. Both keep every value of a NaN step and give the same update on a finite one;
the branch is what spares XLA:CPU a copy of the optimizer state each step. And what a run does with such steps:
count them, and halt after too many in a row."""

import re

import jax
import numpy as np
import pytest

import lm
from lm import checkpointing, experiment, sharding, train
from tests import model_steps, text_data
from tests.test_reliability import run_config


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


# Non-finite steps in a run.


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("data")
    return {"csv": text_data.write_csv(folder / "reviews.csv", text_data.sentiment_rows(100)),
            "vocab": text_data.write_vocab(folder / "vocab.txt")}


def _all_checkpoints(workdir) -> dict[int, dict]:
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), read_only=True)
    states = {step: jax.device_get(ckpt.restore_raw(step)[0]) for step in ckpt.all_steps()}
    ckpt.close()
    return states


def test_nan_gradients_are_skipped_and_counted(data, tmp_path, monkeypatch):
    """NaN gradients at step 3: the step changes no parameter and no optimizer state, train/nonfinite_skips
    counts it, and training goes on."""
    logged = []
    real_log = train._log_train
    monkeypatch.setattr(train, "_log_train", lambda writer, exp, step, history, *a: logged.append(
        (step, jax.device_get(history))) or real_log(writer, exp, step, history, *a))
    lm.run(run_config(data, num_train_steps=4, checkpoint_every=1, keep_checkpoints=10, log_every=4,
                      **{"debug.nan_steps": (3,), "debug.step_log": False}), str(tmp_path / "run"), "train")
    states = _all_checkpoints(tmp_path / "run")
    assert sorted(states) == [1, 2, 3, 4]
    for key in ("params", "opt_state", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, states[2][key], states[3][key])
    assert int(states[3]["step"]) == 3
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[3]["params"]),
                                                         jax.tree.leaves(states[4]["params"])))
    (step, history), = logged
    assert step == 4 and [int(h["nonfinite"]) for h in history] == [0, 0, 1, 0]


def test_consecutive_non_finite_steps_halt_the_run(data, tmp_path):
    """Three NaN steps in a row with max_consecutive_nonfinite=3: the run halts naming the step; every checkpoint
    holds only finite values, and none was written at or after the halting step."""
    workdir = tmp_path / "run"
    config = run_config(data, num_train_steps=8, checkpoint_every=1, keep_checkpoints=10, log_every=100,
                        max_consecutive_nonfinite=3, **{"debug.nan_steps": (3, 4, 5), "debug.step_log": False})
    with pytest.raises(FloatingPointError, match=r"3 consecutive training steps .*the last at step 5"):
        lm.run(config, str(workdir), "train")
    states = _all_checkpoints(workdir)
    assert sorted(states) == [1, 2, 3, 4]
    for state in states.values():
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state) if np.issubdtype(leaf.dtype, np.inexact))
    jax.tree.map(np.testing.assert_array_equal, states[2]["params"], states[4]["params"])
