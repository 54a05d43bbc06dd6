"""VGG 11/13/16/19 (Simonyan & Zisserman 2015), with or without BatchNorm, in Flax NNX.

The layout follows torchvision (3x3 convolutions with bias, 2x2 max-pools, an adaptive average pool to
7x7, a 4096-4096-classes classifier with ReLU and dropout 0.5), so VGG-16 has 138,357,544 parameters at
1000 classes and torchvision's weights map one-to-one (the rows of `fc1` reordered: we flatten the
pooled map as HWC, torchvision as CHW).

Other input sizes: the feature map (input / 32 on a side) is average-pooled to `pool_size` x
`pool_size` with torchvision's adaptive pooling (each output cell averages the input cells
[floor(i*H/n), ceil((i+1)*H/n)); smaller maps are repeated), so the classifier shape does not depend
on the image size. At 224x224 the map is already 7x7 and the pool is the identity. `pool_size=1` is
global average pooling with a 512-wide classifier input, the sensible choice for small images such as
CIFAR; `classifier_width` shrinks the two hidden layers. Inputs are NHWC images (at least 32x32);
logits are float32. With `dtype=bfloat16` the convolutions and the hidden classifier layers compute in
bfloat16; BatchNorm statistics, the adaptive pool and the last layer stay float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lm.models import layers
from lm.models.registry import ModelFamily, register_model
from lm.models.resnet import batch_norm, conv

# Output channels of the convolutions of each stage; a 2x2/2 max-pool ends every stage.
STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}
# torchvision: classifier weights N(0, 0.01), biases zero.
CLASSIFIER_INIT = nnx.initializers.normal(stddev=0.01)


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    depth: int = 16
    batch_norm: bool = False
    num_classes: int = 1000
    dropout_rate: float = 0.5
    pool_size: int = 7  # Side of the adaptive average pool before the classifier; 1 = global pooling.
    classifier_width: int = 4096
    dtype: str = "float32"
    remat: str = "none"  # none | full | dots_saveable: rematerialise each convolution block (lm.models.layers).

    def __post_init__(self):
        layers.check_remat(self.remat)
        if self.depth not in STAGES:
            raise ValueError(f"VGG depth={self.depth} is not supported; choose one of {sorted(STAGES)}.")
        if self.pool_size < 1:
            raise ValueError(f"VGG pool_size={self.pool_size} must be >= 1 (7 as torchvision, 1 = global).")


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] averaging weights of torchvision's AdaptiveAvgPool along one axis."""
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
    """[batch, H, W, C] -> [batch, out_size, out_size, C], in float32."""
    rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_size))
    cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_size))
    return jnp.einsum("nhwc,ih,jw->nijc", x.astype(jnp.float32), rows, cols)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class ConvBlock(nnx.Module):
    """3x3 convolution (with bias, as torchvision), optional BatchNorm, ReLU."""

    def __init__(self, in_features: int, out_features: int, config: VGGConfig, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.conv = conv(in_features, out_features, 3, dtype, rngs, use_bias=True)
        self.norm = batch_norm(out_features, dtype, rngs) if config.batch_norm else None

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x, use_running_average=deterministic)
        return jax.nn.relu(x)


def _conv_blocks(config: VGGConfig, rngs: nnx.Rngs) -> list[list[ConvBlock]]:
    stages, in_features = [], 3
    for channels in STAGES[config.depth]:
        stage = []
        for out_features in channels:
            stage.append(ConvBlock(in_features, out_features, config, rngs))
            in_features = out_features
        stages.append(stage)
    return stages


class VGG(nnx.Module):
    """VGG features, adaptive average pool, and the 3-layer classifier with dropout."""

    def __init__(self, config: VGGConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.stages = nnx.List([nnx.List(stage) for stage in _conv_blocks(config, rngs)])
        width, flat = config.classifier_width, 512 * config.pool_size**2
        self.fc1 = layers.dense(flat, width, ("embed", "mlp"), dtype, rngs, kernel_init=CLASSIFIER_INIT)
        self.fc2 = layers.dense(width, width, ("mlp", "embed"), dtype, rngs, kernel_init=CLASSIFIER_INIT)
        self.head = layers.dense(
            width, config.num_classes, ("embed", "classes"), jnp.float32, rngs, kernel_init=CLASSIFIER_INIT
        )
        self.dropout = layers.Dropout(config.dropout_rate)

    def features(self, images: jax.Array, *, deterministic: bool) -> jax.Array:
        """Convolutional features after the adaptive pool, flattened: [batch, 512 * pool_size**2]."""
        x = images.astype(jnp.dtype(self.config.dtype))

        def run_block(block, x):
            return block(x, deterministic=deterministic)

        run_block = layers.remat(run_block, self.config.remat)
        for stage in self.stages:
            for block in stage:
                x = run_block(block, x)
            x = layers.constrain_batch(max_pool_2x2(x))
        x = adaptive_avg_pool(x, self.config.pool_size).astype(x.dtype)
        return x.reshape(x.shape[0], -1)

    def __call__(
        self, images: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """images: [batch, height, width, 3] float, height and width at least 32."""
        x = self.features(images, deterministic=deterministic)
        x = self.dropout(jax.nn.relu(self.fc1(x)), deterministic=deterministic, rngs=rngs)
        x = self.dropout(jax.nn.relu(self.fc2(x)), deterministic=deterministic, rngs=rngs)
        return self.head(x).astype(jnp.float32)


def build(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return VGG(VGGConfig(**{field.name: model[field.name] for field in dataclasses.fields(VGGConfig)}), rngs=rngs)


register_model(ModelFamily(
    name="vgg",
    build=build,
    modality="image",
    input_keys=("image",),
    head_name=lambda model: "head",
    classifier_head="head",
    importers=("keras", "workdir"),
    arch_keys=("depth", "batch_norm"),  # pool_size, classifier_width: the experiment's (a new shape starts fresh).
    config_class=VGGConfig,
    display_name="VGG",
))
