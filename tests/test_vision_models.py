"""Vision models (ResNet, VGG, ViT): published parameter counts, logical axis names, tiny forward passes,
BatchNorm statistics in train and eval mode, and BatchNorm under a batch sharded over 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs.common import DEFAULT_AXIS_RULES
from configs.vision_models import vision_model_config
from lm.models import create_model, layers, resnet, vit
from lm.models.vgg import adaptive_pool_matrix

LOGICAL_AXES = {name for name, _ in DEFAULT_AXIS_RULES}


@pytest.fixture
def fast_tracing(monkeypatch):
    """Skips a JAX error message that makes NNX initialisation under a trace quadratic in model size.

    Flax's `Variable.set_value` probes `tracer.sharding` at every RNG draw; JAX builds the (unused)
    AttributeError message by walking every equation traced so far (jax-ml/jax PR #40041). Without this,
    `eval_shape` of ResNet-152 takes ~11 s instead of ~2 s here.
    """
    from jax._src.interpreters import partial_eval

    monkeypatch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", lambda self: "", raising=False)


def abstract_model(name: str, **overrides) -> nnx.Module:
    config = vision_model_config(name, **overrides)
    return nnx.eval_shape(lambda: create_model(config, rngs=nnx.Rngs(0)))


def param_count(model: nnx.Module) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def assert_params_annotated(model: nnx.Module) -> None:
    """Every Param is float32 and has one known logical axis name (or None) per dimension."""
    for path, variable in nnx.iter_graph(model):
        if not isinstance(variable, nnx.Param):
            continue
        names = variable.get_metadata().get("out_sharding")
        where = "/".join(map(str, path))
        value = variable.get_value()
        assert names is not None and len(names) == len(value.shape), (where, names)
        assert set(names) - {None} <= LOGICAL_AXES, (where, names)
        assert value.dtype == jnp.float32, where


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("resnet", {"depth": 18}, 11_689_512),
        ("resnet", {"depth": 34}, 21_797_672),
        ("resnet", {"depth": 50}, 25_557_032),
        ("resnet", {"depth": 101}, 44_549_160),
        ("resnet", {"depth": 152}, 60_192_808),
        ("vgg", {"depth": 11}, 132_863_336),
        ("vgg", {"depth": 16}, 138_357_544),
        ("vgg", {"depth": 16, "batch_norm": True}, 138_365_992),  # torchvision vgg16_bn
        ("vit", {"variant": "B", "patch_size": 16}, 86_567_656),
    ],
)
def test_published_parameter_counts(fast_tracing, name, overrides, expected):
    model = abstract_model(name, num_classes=1000, **overrides)
    assert param_count(model) == expected
    assert_params_annotated(model)


@pytest.mark.parametrize("variant, expected", [("Ti", 5.7e6), ("S", 22.05e6), ("L", 304.3e6)])
def test_vit_sizes_match_paper(fast_tracing, variant, expected):
    model = abstract_model("vit", variant=variant, patch_size=16, num_classes=1000)
    assert param_count(model) == pytest.approx(expected, rel=5e-3)
    assert_params_annotated(model)


def test_vit_gap_has_no_class_token(fast_tracing):
    cls_model = abstract_model("vit", variant="Ti", pooling="cls")
    gap_model = abstract_model("vit", variant="Ti", pooling="gap")
    assert param_count(cls_model) - param_count(gap_model) == 2 * 192  # class token + its position


def batch_stats(model: nnx.Module) -> list[jax.Array]:
    """Values (not the Variables, which train mode updates in place) of the BatchNorm statistics."""
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))


def eval_then_train(model: nnx.Module, images: jax.Array):
    """One compiled program: eval-mode logits and BatchNorm state, then train-mode logits and state."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, images, dropout_key):
        model = nnx.merge(graphdef, state)
        eval_logits = model(images, deterministic=True)
        eval_stats = batch_stats(model)
        train_logits = model(images, deterministic=False, rngs=nnx.Rngs(dropout=dropout_key))
        return eval_logits, eval_stats, train_logits, batch_stats(model)

    return run(state, images, jax.random.key(1))


def check_forward(model: nnx.Module, images: jax.Array, num_classes: int, *, has_batch_norm: bool) -> None:
    """Eval mode leaves BatchNorm statistics alone; train mode updates them; logits are float32."""
    initial = batch_stats(model)
    eval_logits, eval_stats, train_logits, train_stats = eval_then_train(model, images)
    for logits in (eval_logits, train_logits):
        assert logits.shape == (images.shape[0], num_classes) and logits.dtype == jnp.float32
        assert np.isfinite(np.asarray(logits)).all()
    assert (len(initial) > 0) == has_batch_norm
    assert all(np.array_equal(a, b) for a, b in zip(initial, eval_stats, strict=True))
    assert all(not np.allclose(a, b) for a, b in zip(initial, train_stats, strict=True))


def tiny_images(batch: int = 2, size: int = 32) -> np.ndarray:
    # numpy, not jax.random: every eager JAX op compiles once per shape, ~0.5 s each on this CPU.
    return np.random.default_rng(0).uniform(size=(batch, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def resnet18_cifar() -> nnx.Module:
    """Built once: eager initialisation compiles one program per parameter shape (~20 s here)."""
    return create_model(
        vision_model_config("resnet", depth=18, variant="cifar", num_classes=10), rngs=nnx.Rngs(0)
    )


def test_resnet18_cifar_forward(resnet18_cifar):
    check_forward(resnet18_cifar, tiny_images(), 10, has_batch_norm=True)


def test_resnet_imagenet_stem_and_bottleneck_block():
    config = resnet.ResNetConfig(depth=50, width=8, dtype="bfloat16")
    with nnx.use_eager_sharding(False):
        stem = resnet.Stem(config, nnx.Rngs(0))
        block = resnet.BottleneckBlock(8, 4, 2, config, nnx.Rngs(1))
    initial = batch_stats(block)

    @nnx.jit
    def run(stem, block, images):
        x = stem(images, deterministic=True)
        y = block(x, deterministic=True)
        shortcut_only = jax.nn.relu(block.shortcut(x, deterministic=True))
        block(x, deterministic=False)
        return x, y, shortcut_only

    x, y, shortcut_only = run(stem, block, tiny_images())
    assert x.shape == (2, 8, 8, 8) and x.dtype == jnp.bfloat16  # 7x7/2 conv and 3x3/2 max-pool: 32 -> 8
    assert y.shape == (2, 4, 4, 16) and y.dtype == jnp.bfloat16  # stride 2, 4 x expansion
    # The last BatchNorm scale starts at zero, so the block starts as ReLU(shortcut(x)).
    np.testing.assert_array_equal(y, shortcut_only)
    after = batch_stats(block)
    assert all(a.dtype == np.float32 and not np.allclose(a, b) for a, b in zip(after, initial, strict=True))


def test_vgg11_small_input_forward():
    config = vision_model_config("vgg", depth=11, batch_norm=True, num_classes=10, classifier_width=64)
    model = create_model(config, rngs=nnx.Rngs(0))
    check_forward(model, tiny_images(), 10, has_batch_norm=True)


def test_vit_ti16_forward():
    config = vision_model_config("vit", variant="Ti", image_size=32, num_classes=10)
    check_forward(create_model(config, rngs=nnx.Rngs(0)), tiny_images(), 10, has_batch_norm=False)


def test_vit_gap_pooling_forward():
    config = vision_model_config("vit", variant="Ti", image_size=32, pooling="gap", num_classes=10)
    logits = nnx.jit(lambda model, images: model(images))(
        create_model(config, rngs=nnx.Rngs(0)), tiny_images()
    )
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_vit_rejects_other_image_sizes():
    config = vision_model_config("vit", variant="Ti", image_size=32, num_classes=10)
    model = nnx.eval_shape(lambda: create_model(config, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="image_size=32"):
        nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))


def test_vit_attention_dropout():
    config = vit.ViTConfig(variant="Ti", attention_dropout_rate=0.5)
    with nnx.use_eager_sharding(False):
        attention = vit.SelfAttention(config, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(2, 5, 192)).astype(np.float32)

    @nnx.jit
    def run(attention, x):
        fused = attention(x, deterministic=True, rngs=None)
        dropped = attention(x, deterministic=False, rngs=nnx.Rngs(dropout=0))
        q, k, v = (xs.reshape(2, 5, 3, 64) for xs in (x, x * 0.5, -x))
        explicit = layers.attention_with_dropout(q, k, v, True, nnx.Dropout(0.0), None)
        return fused, dropped, explicit, jax.nn.dot_product_attention(q, k, v)

    fused, dropped, explicit, reference = run(attention, x)
    assert not np.allclose(dropped, fused, atol=1e-3)
    np.testing.assert_allclose(explicit, reference, atol=1e-5)


def test_adaptive_pool_matches_torchvision_windows():
    np.testing.assert_allclose(adaptive_pool_matrix(7, 7), np.eye(7))
    np.testing.assert_allclose(adaptive_pool_matrix(1, 7), np.ones((7, 1)))
    # 5 -> 3: windows [0, 2), [1, 4), [3, 5), as torch.nn.AdaptiveAvgPool1d.
    expected = np.array([[1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 1 / 2, 1 / 2]])
    np.testing.assert_allclose(adaptive_pool_matrix(5, 3), expected, rtol=1e-6)


def test_vision_model_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="depht"):
        vision_model_config("resnet", depht=50)
    with pytest.raises(ValueError, match="alexnet"):
        vision_model_config("alexnet")


def test_batch_norm_statistics_same_on_one_device_and_sharded_over_eight(resnet18_cifar):
    graphdef, params, stats = nnx.split(resnet18_cifar, nnx.Param, nnx.BatchStat)

    @jax.jit
    def train_forward(params, stats, images):
        model = nnx.merge(graphdef, params, stats)
        logits = model(images, deterministic=False)
        return logits, nnx.state(model, nnx.BatchStat)

    images = np.random.default_rng(2).normal(size=(16, 8, 8, 3)).astype(np.float32)
    single = jax.device_put(images, jax.devices()[0])
    logits_one, stats_one = train_forward(params, stats, single)

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
    assert len(sharded.sharding.device_set) == 8
    logits_eight, stats_eight = train_forward(
        jax.device_put(params, replicated), jax.device_put(stats, replicated), sharded
    )

    np.testing.assert_allclose(logits_eight, logits_one, atol=1e-5, rtol=1e-5)
    for one, eight, initial in zip(*(jax.tree.leaves(s) for s in (stats_one, stats_eight, stats))):
        assert not np.allclose(one, initial)
        np.testing.assert_allclose(eight, one, atol=1e-5, rtol=1e-5)
