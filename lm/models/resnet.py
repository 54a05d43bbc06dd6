"""ResNet v1.5 (He et al. 2016; stride on the 3x3 convolution of the bottleneck) in Flax NNX.

Depths 18 and 34 use basic blocks, 50, 101 and 152 bottleneck blocks. The `imagenet` stem is a 7x7/2
convolution and a 3x3/2 max-pool; the `cifar` stem is a single 3x3/1 convolution without pooling. The
layout follows torchvision (explicit symmetric padding, convolutions without bias, BatchNorm after each
convolution, a 1x1 projection shortcut where the shape changes) so that its weights map one-to-one and
ResNet-50 has 25,557,032 parameters at 1000 classes.

Three options, off by default, represent ResNet v1 checkpoints exactly (Keras applications' ResNet50/101/152,
Hugging Face ResNets with `downsample_in_bottleneck`): `stride_in_1x1` puts a bottleneck's stride on its
first 1x1 convolution (v1) instead of the 3x3 (v1.5); `conv_bias` gives every convolution a bias;
`norm_epsilon` sets the BatchNorm epsilon (Keras: 1.001e-5).

BatchNorm keeps running statistics as `nnx.BatchStat` variables: it normalises with the batch statistics
and updates the running averages (momentum 0.9) when `deterministic=False`, and uses the running
averages when `deterministic=True`. Under `jax.jit` over a batch-sharded input the statistics are those
of the global batch. Inputs are NHWC images; logits are float32. With `dtype=bfloat16` the convolutions
and activations are bfloat16, while the BatchNorm statistics (and running averages), the pooling and the
head are float32. `remat` rematerialises each residual block in the backward pass.

Convolutions and BatchNorm come from `lm.models.convolution`: `nnx.Conv` and `nnx.BatchNorm` with the
same parameters and results, arranged for XLA:CPU speed (1x1 convolutions as matrix products, BatchNorm as
one multiply-add). `conv` and `batch_norm` are also used by `lm.models.vgg`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lm.models import convolution, layers
from lm.models.registry import ModelFamily, register_model

STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BOTTLENECK_EXPANSION = 4

# torchvision's initialisation: He normal over fan-out for convolutions; PyTorch's default
# uniform(+-1/sqrt(fan_in)) for the final linear layer.
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
HEAD_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    depth: int = 50
    variant: str = "imagenet"  # imagenet | cifar
    num_classes: int = 1000
    width: int = 64  # Channels of the stem and the first stage; each later stage doubles them.
    zero_init_residual: bool = True  # Last BatchNorm scale of each block starts at 0 (Goyal et al. 2017).
    stride_in_1x1: bool = False  # v1: the bottleneck's stride on its first 1x1 conv instead of the 3x3 (v1.5).
    conv_bias: bool = False  # Biases on every convolution (Keras applications' ResNets have them).
    norm_epsilon: float = 1e-5  # BatchNorm epsilon (torchvision 1e-5, Keras applications 1.001e-5).
    # Non-empty: a projection MLP (SimCLR, Chen et al. 2020) of these widths replaces the linear head.
    projection_dims: tuple[int, ...] = ()
    dtype: str = "float32"
    remat: str = "none"  # none | full | dots_saveable: rematerialise each residual block (lm.models.layers).

    def __post_init__(self):
        layers.check_remat(self.remat)
        if self.depth not in STAGE_SIZES:
            raise ValueError(
                f"ResNet depth={self.depth} is not supported; choose one of {sorted(STAGE_SIZES)}."
            )
        if self.variant not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet variant={self.variant!r} is not known; choose 'imagenet' or 'cifar'.")

    @property
    def bottleneck(self) -> bool:
        return self.depth >= 50


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
    *,
    strides: int = 1,
    use_bias: bool = False,
) -> convolution.Conv:
    """A square convolution with torchvision's symmetric padding (kernel_size // 2) and logical names."""
    return convolution.Conv(
        in_features,
        out_features,
        kernel_size,
        strides=strides,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(CONV_INIT, (None, None, "conv_in", "conv_out")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs,
    )


def batch_norm(
    features: int, dtype: jnp.dtype, rngs: nnx.Rngs, *, zero_scale: bool = False, epsilon: float = 1e-5
) -> convolution.BatchNorm:
    """BatchNorm over the channel axis with momentum 0.9 and (by default) epsilon 1e-5, torchvision's values."""
    scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
    return convolution.BatchNorm(
        features,
        momentum=0.9,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nnx.with_partitioning(scale_init, ("norm",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3x3 max-pool with stride 2 and padding 1, as torchvision's ResNet stem."""
    padding = ((0, 0), (1, 1), (1, 1), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), padding)


def _conv(in_features: int, out_features: int, kernel_size: int, config: ResNetConfig, rngs: nnx.Rngs, *,
          strides: int = 1) -> convolution.Conv:
    return conv(in_features, out_features, kernel_size, jnp.dtype(config.dtype), rngs, strides=strides,
                use_bias=config.conv_bias)


def _norm(features: int, config: ResNetConfig, rngs: nnx.Rngs, *, zero_scale: bool = False) -> convolution.BatchNorm:
    return batch_norm(features, jnp.dtype(config.dtype), rngs, zero_scale=zero_scale, epsilon=config.norm_epsilon)


class Shortcut(nnx.Module):
    """1x1 strided projection + BatchNorm, used where a block changes the shape."""

    def __init__(self, in_features: int, out_features: int, strides: int, config: ResNetConfig, rngs: nnx.Rngs):
        self.conv = _conv(in_features, out_features, 1, config, rngs, strides=strides)
        self.norm = _norm(out_features, config, rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        return self.norm(self.conv(x), use_running_average=deterministic)


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions (the first strided) and a residual connection."""

    def __init__(self, in_features: int, features: int, strides: int, config: ResNetConfig, rngs: nnx.Rngs):
        self.conv1 = _conv(in_features, features, 3, config, rngs, strides=strides)
        self.norm1 = _norm(features, config, rngs)
        self.conv2 = _conv(features, features, 3, config, rngs)
        self.norm2 = _norm(features, config, rngs, zero_scale=config.zero_init_residual)
        needs_projection = strides != 1 or in_features != features
        self.shortcut = Shortcut(in_features, features, strides, config, rngs) if needs_projection else None

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        y = jax.nn.relu(self.norm1(self.conv1(x), use_running_average=deterministic))
        y = self.norm2(self.conv2(y), use_running_average=deterministic)
        residual = x if self.shortcut is None else self.shortcut(x, deterministic=deterministic)
        return jax.nn.relu(y + residual)


class BottleneckBlock(nnx.Module):
    """1x1 reduce, 3x3 (strided: v1.5; v1 strides the 1x1 with `stride_in_1x1`), 1x1 expand by 4, residual."""

    def __init__(self, in_features: int, features: int, strides: int, config: ResNetConfig, rngs: nnx.Rngs):
        out_features = features * BOTTLENECK_EXPANSION
        strides_1x1, strides_3x3 = (strides, 1) if config.stride_in_1x1 else (1, strides)
        self.conv1 = _conv(in_features, features, 1, config, rngs, strides=strides_1x1)
        self.norm1 = _norm(features, config, rngs)
        self.conv2 = _conv(features, features, 3, config, rngs, strides=strides_3x3)
        self.norm2 = _norm(features, config, rngs)
        self.conv3 = _conv(features, out_features, 1, config, rngs)
        self.norm3 = _norm(out_features, config, rngs, zero_scale=config.zero_init_residual)
        needs_projection = strides != 1 or in_features != out_features
        self.shortcut = (
            Shortcut(in_features, out_features, strides, config, rngs) if needs_projection else None
        )

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        y = jax.nn.relu(self.norm1(self.conv1(x), use_running_average=deterministic))
        y = jax.nn.relu(self.norm2(self.conv2(y), use_running_average=deterministic))
        y = self.norm3(self.conv3(y), use_running_average=deterministic)
        residual = x if self.shortcut is None else self.shortcut(x, deterministic=deterministic)
        return jax.nn.relu(y + residual)


class Stem(nnx.Module):
    """ImageNet: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool. CIFAR: 3x3/1 conv, BN, ReLU."""

    def __init__(self, config: ResNetConfig, rngs: nnx.Rngs):
        self.imagenet = config.variant == "imagenet"
        kernel_size, strides = (7, 2) if self.imagenet else (3, 1)
        self.conv = _conv(3, config.width, kernel_size, config, rngs, strides=strides)
        self.norm = _norm(config.width, config, rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        x = jax.nn.relu(self.norm(self.conv(x), use_running_average=deterministic))
        return max_pool_3x3_s2(x) if self.imagenet else x


def _blocks(config: ResNetConfig, rngs: nnx.Rngs) -> tuple[list[nnx.Module], int]:
    """All residual blocks in order, and the number of output channels of the last one."""
    block_type = BottleneckBlock if config.bottleneck else BasicBlock
    expansion = BOTTLENECK_EXPANSION if config.bottleneck else 1
    blocks, in_features = [], config.width
    for stage, num_blocks in enumerate(STAGE_SIZES[config.depth]):
        features = config.width * 2**stage
        for index in range(num_blocks):
            strides = 2 if stage > 0 and index == 0 else 1
            blocks.append(block_type(in_features, features, strides, config, rngs))
            in_features = features * expansion
    return blocks, in_features


class ResNet(nnx.Module):
    """ResNet classifier: stem, four stages of residual blocks, global average pool, linear head."""

    def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.stem = Stem(config, rngs)
        blocks, features = _blocks(config, rngs)
        self.blocks = nnx.List(blocks)
        if config.projection_dims:
            self.projection = ProjectionHead(features, config.projection_dims, config, rngs)
        else:
            self.head = nnx.Linear(
                features,
                config.num_classes,
                dtype=jnp.float32,
                param_dtype=jnp.float32,
                kernel_init=nnx.with_partitioning(HEAD_INIT, ("embed", "classes")),
                bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("classes",)),
                rngs=rngs,
            )

    def __call__(
        self, images: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """images: [batch, height, width, 3] float. `rngs` is unused (no dropout) but kept for a uniform API."""
        del rngs
        x = layers.constrain_batch(
            self.stem(images.astype(jnp.dtype(self.config.dtype)), deterministic=deterministic)
        )

        def run_block(block, x):
            return block(x, deterministic=deterministic)

        run_block = layers.remat(run_block, self.config.remat)
        for block in self.blocks:
            x = layers.constrain_batch(run_block(block, x))
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if self.config.projection_dims:
            return self.projection(pooled, deterministic=deterministic).astype(jnp.float32)
        return self.head(pooled).astype(jnp.float32)


class ProjectionHead(nnx.Module):
    """SimCLR's projection MLP: (Linear, BatchNorm, ReLU) for each hidden width, then Linear to the last width.

    Chen et al. 2020 (v1) use one hidden layer of the feature width and 128 outputs; SimCLR v2 three layers.
    The contrastive loss reads its output; after pretraining it is dropped and a linear head is probed or
    fine-tuned on the pooled features.
    """

    def __init__(self, in_features: int, dims: tuple[int, ...], config: ResNetConfig, rngs: nnx.Rngs):
        widths = (in_features, *dims)
        self.dense = nnx.List([
            nnx.Linear(a, b, use_bias=False, dtype=jnp.dtype(config.dtype), param_dtype=jnp.float32,
                       kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp")),
                       rngs=rngs)
            for a, b in zip(widths[:-1], widths[1:])
        ])
        self.norms = nnx.List([_norm(width, config, rngs) for width in dims[:-1]])

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        for dense, norm in zip(self.dense[:-1], self.norms):
            x = jax.nn.relu(norm(dense(x), use_running_average=deterministic))
        return self.dense[-1](x)


def build(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    values = {field.name: model[field.name] for field in dataclasses.fields(ResNetConfig)}
    return ResNet(ResNetConfig(**dict(values, projection_dims=tuple(model.projection_dims))), rngs=rngs)


register_model(ModelFamily(
    name="resnet",
    build=build,
    modality="image",
    input_keys=("image",),
    head_name=lambda model: "projection" if model.projection_dims else "head",
    classifier_head="head",
    importers=("hf_resnet", "keras", "workdir"),
    arch_keys=("depth", "variant", "width", "stride_in_1x1", "conv_bias", "norm_epsilon"),
    config_class=ResNetConfig,
    display_name="ResNet",
))
