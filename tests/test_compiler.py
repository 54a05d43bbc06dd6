"""config.xla_cpu_ynn_fusions reaches XLA: on CPU, convolutions stay with XLA, reductions go to YNNPACK."""

import re

import jax
import jax.numpy as jnp
import pytest

from configs import vision_classification
from lm import compiler, config_checks, experiment, sharding, train
from tests.test_vision_train import _write_folder


def _ynn_computations(hlo: str) -> list[str]:
    """The bodies of the computations that YNNPACK fusions call, from a compiled module's text."""
    called = set(re.findall(r'calls=(%[\w.-]+)[^\n]*"__ynn_fusion"', hlo))
    bodies = {match[1]: match[0] for match in re.finditer(r"^(%[\w.-]+) \(.*?^}", hlo, flags=re.M | re.S)}
    return [bodies[name] for name in sorted(called)]


def _compiled_step(tmp_path, **overrides) -> str:
    config = vision_classification.get_config("resnet_small,folder,smoke")
    config.data.train_dir = str(_write_folder(tmp_path / "images"))
    for key, value in overrides.items():
        config[key] = value
    exp = experiment.build(config_checks.resolved_copy(config), jax.devices()[:1])
    state = experiment.initial_state(exp)
    batch = sharding.global_batch(next(exp.data.train_iterator(0)), exp.mesh)
    with jax.set_mesh(exp.mesh):
        return train.jit_train_step(exp).lower(state, batch).compile().as_text()


def test_train_step_is_compiled_with_the_options(tmp_path):
    assert "__ynn_fusion" in _compiled_step(tmp_path / "ours")  # Dots and reductions.
    assert "__ynn_fusion" not in _compiled_step(tmp_path / "none", xla_cpu_ynn_fusions="")


def _cpu_mesh_config():
    config = vision_classification.get_config("resnet_small,folder,smoke")
    return config, sharding.create_mesh(config.mesh, jax.devices()[:1])


def test_convolutions_and_their_gradients_stay_with_xla():
    config, mesh = _cpu_mesh_config()
    x = jax.ShapeDtypeStruct((8, 16, 16, 64), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)

    def loss(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y))

    def ynn_convolutions(options):
        hlo = jax.jit(jax.grad(loss, (0, 1)), compiler_options=options).lower(x, w).compile().as_text()
        assert hlo.count(" convolution(") == 3  # forward, input gradient, kernel gradient
        return [body for body in _ynn_computations(hlo) if " convolution(" in body]

    assert not ynn_convolutions(compiler.step_options(config, mesh))
    config.xla_cpu_ynn_fusions = compiler.XLA_DEFAULT
    assert ynn_convolutions(compiler.step_options(config, mesh))  # XLA's default gives them to YNNPACK.


def test_batch_statistics_are_not_reduce_windows():
    """Without YNNPACK, XLA:CPU rewrites a long reduction as a tree of (slow) reduce-windows."""
    config, mesh = _cpu_mesh_config()
    x = jax.ShapeDtypeStruct((64, 16, 16, 8), jnp.float32)

    def statistics(x):
        return jnp.mean(x, (0, 1, 2)), jnp.mean(jnp.square(x), (0, 1, 2))

    def compiled(options):
        return jax.jit(statistics, compiler_options=options).lower(x).compile().as_text()

    assert "reduce-window(" not in compiled(compiler.step_options(config, mesh))
    config.xla_cpu_ynn_fusions = ""
    assert "reduce-window(" in compiled(compiler.step_options(config, mesh))


def test_options_per_platform():
    config, mesh = _cpu_mesh_config()
    assert compiler.step_options(config, mesh) == {
        "xla_cpu_experimental_ynn_fusion_type":
            "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    config.xla_cpu_ynn_fusions = ""
    assert compiler.step_options(config, mesh) == {"xla_cpu_experimental_ynn_fusion_type": ""}
    config.xla_cpu_ynn_fusions = compiler.XLA_DEFAULT
    assert compiler.step_options(config, mesh) is None


def test_unknown_fusion_kind_is_a_clear_error():
    config = vision_classification.get_config("resnet_small,folder,smoke")
    config.data.train_dir = "/nowhere"
    config.xla_cpu_ynn_fusions = "dot,convolution"
    with pytest.raises(ValueError, match=r"xla_cpu_ynn_fusions='dot,convolution'.*\['convolution'\]"):
        config_checks.resolved_copy(config)
