"""Vision Transformer (Dosovitskiy et al. 2021) in Flax NNX: ViT-Ti/S/B/L with 16x16 or 32x32 patches.

Non-overlapping patches are embedded by a strided convolution, a class token is prepended
(`pooling='cls'`) or the tokens are averaged after the encoder (`pooling='gap'`), and learned position
embeddings are added. The encoder is pre-LN: x + Attn(LN(x)), x + MLP(LN(x)) with a 4x GELU MLP, then
a final LayerNorm and a linear head. ViT-B/16 at 224x224 and 1000 classes has 86,567,656 parameters.

Initialisation follows the reference implementation (big_vision): Xavier-uniform dense kernels, zero
biases, position embeddings N(0, 0.02), a zero class token and a zero head. Dropout (`dropout_rate`)
acts after the embeddings, the attention output and both MLP layers; attention-probability dropout
(`attention_dropout_rate`, 0 in the paper) takes an explicit softmax path, otherwise attention is
`jax.nn.dot_product_attention` (`lm.models.layers.attention`: cuDNN on GPU in half precision). With
`dtype=bfloat16` the blocks compute in bfloat16 while the softmax, LayerNorm statistics and the head stay
float32; `remat` rematerialises each encoder block; heads and MLP split over the `tensor` mesh axis
under the default axis rules. Position embeddings are sized for `image_size`; other input sizes
need them resampled (a weight-loading concern), and are rejected here. Inputs are NHWC images;
logits are float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lm.models import layers
from lm.models.registry import ModelFamily, register_model

# variant: (hidden size, layers, heads). MLP width is 4 x hidden.
VIT_SIZES = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
}
DENSE_INIT = nnx.initializers.xavier_uniform()
POSITION_INIT = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    variant: str = "B"
    patch_size: int = 16
    image_size: int = 224
    pooling: str = "cls"  # cls | gap
    num_classes: int = 1000
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    dtype: str = "float32"
    remat: str = "none"  # none | full | dots_saveable: rematerialise each encoder block (lm.models.layers).

    def __post_init__(self):
        layers.check_remat(self.remat)
        if self.variant not in VIT_SIZES:
            raise ValueError(f"ViT variant={self.variant!r} is not known; choose one of {list(VIT_SIZES)}.")
        if self.pooling not in ("cls", "gap"):
            raise ValueError(f"ViT pooling={self.pooling!r} is not known; choose 'cls' or 'gap'.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViT image_size={self.image_size} is not a multiple of patch_size={self.patch_size}."
            )

    @property
    def hidden_size(self) -> int:
        return VIT_SIZES[self.variant][0]

    @property
    def num_layers(self) -> int:
        return VIT_SIZES[self.variant][1]

    @property
    def num_heads(self) -> int:
        return VIT_SIZES[self.variant][2]

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _dense(
    in_features: int, out_features: int, names: tuple, config: ViTConfig, rngs: nnx.Rngs
) -> layers.Linear:
    return layers.dense(
        in_features, out_features, names, jnp.dtype(config.dtype), rngs, kernel_init=DENSE_INIT
    )


class SelfAttention(nnx.Module):
    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        h = config.hidden_size
        self.query = _dense(h, h, ("embed", "heads"), config, rngs)
        self.key = _dense(h, h, ("embed", "heads"), config, rngs)
        self.value = _dense(h, h, ("embed", "heads"), config, rngs)
        self.output = _dense(h, h, ("heads", "embed"), config, rngs)
        self.attention_dropout = layers.Dropout(config.attention_dropout_rate)

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        batch, length, hidden = x.shape
        shape = (batch, length, self.config.num_heads, hidden // self.config.num_heads)
        q, k, v = (proj(x).reshape(shape) for proj in (self.query, self.key, self.value))
        out = layers.attention(q, k, v, None, dropout=self.attention_dropout, deterministic=deterministic, rngs=rngs)
        return self.output(out.reshape(batch, length, hidden))


class EncoderBlock(nnx.Module):
    """Pre-LN transformer block: x + Dropout(Attn(LN(x))), then x + MLP(LN(x))."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        h, dtype = config.hidden_size, jnp.dtype(config.dtype)
        self.attention_norm = layers.layer_norm(h, config.layer_norm_eps, dtype, rngs)
        self.attention = SelfAttention(config, rngs=rngs)
        self.mlp_norm = layers.layer_norm(h, config.layer_norm_eps, dtype, rngs)
        self.mlp_in = _dense(h, 4 * h, ("embed", "mlp"), config, rngs)
        self.mlp_out = _dense(4 * h, h, ("mlp", "embed"), config, rngs)
        self.dropout = layers.Dropout(config.dropout_rate)

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        a = self.attention(self.attention_norm(x), deterministic=deterministic, rngs=rngs)
        x = x + self.dropout(a, deterministic=deterministic, rngs=rngs)
        y = jax.nn.gelu(self.mlp_in(self.mlp_norm(x)), approximate=False)
        y = self.mlp_out(self.dropout(y, deterministic=deterministic, rngs=rngs))
        return x + self.dropout(y, deterministic=deterministic, rngs=rngs)


class PatchEmbedding(nnx.Module):
    """Patches -> tokens by a patch_size-strided convolution, class token, position embeddings."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        h, p = config.hidden_size, config.patch_size
        self.projection = nnx.Conv(
            3,
            h,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.float32,
            kernel_init=nnx.with_partitioning(
                nnx.initializers.lecun_normal(), (None, None, "conv_in", "embed")
            ),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
            rngs=rngs,
        )
        num_tokens = config.num_patches + (config.pooling == "cls")
        self.position = nnx.Param(
            POSITION_INIT(rngs.params(), (num_tokens, h)), out_sharding=("length", "embed")
        )
        self.cls_token = (
            nnx.Param(jnp.zeros((h,)), out_sharding=("embed",)) if config.pooling == "cls" else None
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        size = self.config.image_size
        if images.shape[1:3] != (size, size):
            raise ValueError(
                f"ViT built for image_size={size} got images of shape {images.shape}; resize the images or "
                "build the model with the matching image_size."
            )
        x = self.projection(images.astype(jnp.dtype(self.config.dtype)))
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        return layers.add_to_each(x, self.position[...].astype(x.dtype))


class VisionTransformer(nnx.Module):
    """ViT classifier. Returns float32 logits [batch, num_classes]."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        h, dtype = config.hidden_size, jnp.dtype(config.dtype)
        self.embedding = PatchEmbedding(config, rngs=rngs)
        self.dropout = layers.Dropout(config.dropout_rate)
        self.blocks = nnx.List([EncoderBlock(config, rngs=rngs) for _ in range(config.num_layers)])
        self.norm = layers.layer_norm(h, config.layer_norm_eps, dtype, rngs)
        zeros = nnx.initializers.zeros_init()
        self.head = layers.dense(h, config.num_classes, ("embed", "classes"), jnp.float32, rngs, kernel_init=zeros)

    def __call__(
        self, images: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """images: [batch, image_size, image_size, 3] float."""
        x = layers.constrain_batch(
            self.dropout(self.embedding(images), deterministic=deterministic, rngs=rngs)
        )

        def run_block(block, x, rngs):
            return block(x, deterministic=deterministic, rngs=rngs)

        run_block = layers.remat(run_block, self.config.remat)
        for block in self.blocks:
            x = layers.constrain_batch(run_block(block, x, rngs))
        x = self.norm(x)
        pooled = x[:, 0] if self.config.pooling == "cls" else jnp.mean(x.astype(jnp.float32), axis=1)
        return self.head(pooled).astype(jnp.float32)


def build(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    fields = [field.name for field in dataclasses.fields(ViTConfig)]
    return VisionTransformer(ViTConfig(**{name: model[name] for name in fields}), rngs=rngs)


register_model(ModelFamily(
    name="vit",
    build=build,
    modality="image",
    input_keys=("image",),
    head_name=lambda model: "head",
    classifier_head="head",
    layer_stack=lambda model: ("embedding", "blocks", VIT_SIZES[model.variant][1]),
    importers=("hf_vit", "workdir"),
    arch_keys=("variant", "patch_size", "pooling", "layer_norm_eps"),  # image_size: positions are resampled.
    config_class=ViTConfig,
    exporter="vit",
    display_name="ViT",
))
