"""BERT encoder (Devlin et al. 2019) and a sequence-classification head, in Flax NNX.

Post-LN transformer layers with GELU, learned word/position/token-type embeddings and a tanh pooler
over the first token, as in the original BERT and Hugging Face's `BertModel`, so that published
weights load one-to-one (`lm.weights.hf_bert`). Parameters are float32; `dtype` sets the compute
dtype: with bfloat16 the matrix products and activations are bfloat16, while the attention softmax,
the LayerNorm statistics, the classifier and the masked-LM logits stay float32. `remat` rematerialises
each transformer layer in the backward pass. Every parameter carries logical axis names that
`lm.sharding` maps onto the device mesh; with the default rules the attention heads and the MLP split
over the `tensor` mesh axis (Megatron-style).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lm.models import layers
from lm.models import packing as packing_lib
from lm.models.registry import ModelFamily, register_model


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    dtype: str = "float32"
    remat: str = "none"  # none | full | dots_saveable: rematerialise each transformer layer (lm.models.layers).
    # Training on one CPU device: the per-token layers on the real tokens only, when the batch's (each micro-batch's)
    # fit in this fraction of its padded positions (lm.models.packing); 1.0: every position, always.
    unpad_fraction: float = 1.0

    def __post_init__(self):
        layers.check_remat(self.remat)
        check_unpad_fraction(self.unpad_fraction)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class BertEmbeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.word = layers.embed(config.vocab_size, config.hidden_size, ("vocab", "embed"), dtype, rngs)
        self.position = layers.embed(
            config.max_position_embeddings, config.hidden_size, ("length", "embed"), dtype, rngs
        )
        self.token_type = layers.embed(config.type_vocab_size, config.hidden_size, (None, "embed"), dtype, rngs)
        self.norm = layers.layer_norm(config.hidden_size, config.layer_norm_eps, dtype, rngs)
        self.dropout = layers.Dropout(config.dropout_rate)

    def __call__(self, input_ids, token_type_ids, *, deterministic: bool, rngs: nnx.Rngs | None):
        positions = self.position(jnp.arange(input_ids.shape[-1]))
        x = layers.add_to_each(self.word(input_ids), positions) + self.token_type(token_type_ids)
        return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)


class BertSelfAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        h = config.hidden_size
        self.query = layers.dense(h, h, ("embed", "heads"), dtype, rngs)
        self.key = layers.dense(h, h, ("embed", "heads"), dtype, rngs)
        self.value = layers.dense(h, h, ("embed", "heads"), dtype, rngs)
        self.output = layers.dense(h, h, ("heads", "embed"), dtype, rngs)
        self.attention_dropout = layers.Dropout(config.attention_dropout_rate)

    def __call__(self, x, attention_mask, *, deterministic: bool, rngs: nnx.Rngs | None,
                 packing: packing_lib.Packing | None = None):
        """x: [batch, length, hidden], or with `packing` the packed rows [tokens, hidden] (attention_mask's
        [batch, length] gives the shape the attention runs at); the output has x's shape."""
        batch, length = attention_mask.shape
        shape = (batch, length, self.config.num_heads, self.config.head_dim)

        def project(dense):
            y = dense(x)
            return (y if packing is None else packing_lib.unpack(y, packing, batch, length)).reshape(shape)

        out = layers.attention(project(self.query), project(self.key), project(self.value), attention_mask,
                               dropout=self.attention_dropout, deterministic=deterministic, rngs=rngs)
        out = out.reshape(batch, length, -1)
        return self.output(out if packing is None else packing_lib.pack(out, packing))


class BertLayer(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        h, m = config.hidden_size, config.intermediate_size
        self.attention = BertSelfAttention(config, rngs=rngs)
        self.attention_norm = layers.layer_norm(h, config.layer_norm_eps, dtype, rngs)
        self.intermediate = layers.dense(h, m, ("embed", "mlp"), dtype, rngs)
        self.output = layers.dense(m, h, ("mlp", "embed"), dtype, rngs)
        self.output_norm = layers.layer_norm(h, config.layer_norm_eps, dtype, rngs)
        self.dropout = layers.Dropout(config.dropout_rate)

    def __call__(self, x, attention_mask, *, deterministic: bool, rngs: nnx.Rngs | None,
                 packing: packing_lib.Packing | None = None):
        a = self.attention(x, attention_mask, deterministic=deterministic, rngs=rngs, packing=packing)
        x = self.attention_norm(x + self.dropout(a, deterministic=deterministic, rngs=rngs))
        y = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))
        return self.output_norm(x + self.dropout(y, deterministic=deterministic, rngs=rngs))


class BertEncoder(nnx.Module):
    """Embeddings, transformer layers and pooler. Returns (last hidden state, pooled output)."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.pooler = layers.dense(config.hidden_size, config.hidden_size, ("embed", "embed_out"), dtype, rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic=True, rngs=None):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = layers.constrain_batch(self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs))

        def run_layer(layer, x, attention_mask, rngs, packing):
            return layer(x, attention_mask, deterministic=deterministic, rngs=rngs, packing=packing)

        run_layer = layers.remat(run_layer, self.config.remat)
        if not deterministic and packing_lib.requested():  # Training a batch that fits (lm/models/packing.py).
            packing = packing_lib.token_packing(attention_mask, self.config.unpad_fraction)
            rows = packing_lib.pack(x, packing)
            for layer in self.layers:
                rows = run_layer(layer, rows, attention_mask, rngs, packing)
            x = packing_lib.unpack(rows, packing, *attention_mask.shape)
        else:
            for layer in self.layers:
                x = layers.constrain_batch(run_layer(layer, x, attention_mask, rngs, None))
        pooled = jnp.tanh(self.pooler(x[:, 0]))
        return x, pooled


class BertClassifier(nnx.Module):
    """BERT encoder + dropout + linear head on the pooled output. The head computes in float32 (logits)."""

    def __init__(self, config: BertConfig, num_classes: int, *, rngs: nnx.Rngs):
        self.encoder = BertEncoder(config, rngs=rngs)
        self.dropout = layers.Dropout(config.dropout_rate)
        self.classifier = layers.dense(
            config.hidden_size, num_classes, ("embed", "classes"), jnp.float32, rngs
        )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic=True, rngs=None):
        _, pooled = self.encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
        )
        pooled = self.dropout(pooled, deterministic=deterministic, rngs=rngs)
        return self.classifier(pooled).astype(jnp.float32)


class BertMaskedLMHead(nnx.Module):
    """BERT's masked-LM head: dense + GELU + LayerNorm, then the word embeddings (tied) and an output bias."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        h = config.hidden_size
        self.transform = layers.dense(h, h, ("embed", "embed_out"), dtype, rngs)
        self.norm = layers.layer_norm(h, config.layer_norm_eps, dtype, rngs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32), out_sharding=("vocab",))

    def __call__(self, x, word_embeddings: nnx.Embed):
        x = self.norm(jax.nn.gelu(self.transform(x), approximate=False))
        # The tied decoder: compute-dtype inputs, float32 logits (accumulated in float32, as `attend` would not).
        # Over rows, as layers.Linear: from the 3-D product XLA:CPU copied the logits' gradient into transposed
        # layouts (tests/test_pretrain.py); the head's gradient took ~1.3x as long (bench/README.md).
        decoder = word_embeddings.embedding[...].astype(x.dtype)
        logits = layers.over_rows(lambda rows: jnp.dot(rows, decoder.T, preferred_element_type=jnp.float32), x)
        return logits + self.bias[...]


class BertForMaskedLM(nnx.Module):
    """BERT encoder + masked-LM head whose decoder is the encoder's word embedding matrix (tied, as in BERT).

    Returns float32 logits over the vocabulary at every position, [batch, length, vocab_size]. The pooler is
    part of the encoder (so that checkpoints transfer to `BertClassifier` by name) but takes no part here.
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.encoder = BertEncoder(config, rngs=rngs)
        self.mlm_head = BertMaskedLMHead(config, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic=True, rngs=None):
        hidden, _ = self.encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs)
        return self.mlm_head(hidden, self.encoder.embeddings.word)


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The keys of config.model that a checkpoint decides (config.init_from); dropout, the head and the
# classes are the experiment's (hf_bert.configure writes the checkpoint's dropout unless the command line sets it).
ARCH_KEYS = (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
)


def bert_config(model: ml_collections.ConfigDict) -> BertConfig:
    """`config.model` -> BertConfig; a key it lacks takes BertConfig's default (a checkpoint's model section saved
    before the key existed, e.g. `unpad_fraction`, still builds its model for predict and serve)."""
    fields = [field.name for field in dataclasses.fields(BertConfig)]
    return BertConfig(**{name: model[name] for name in fields if name in model})


def build(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """`model.head`: "classifier" (`BertClassifier`) or "mlm" (`BertForMaskedLM`, for `lm.tasks.mlm`)."""
    if model.head == "mlm":
        return BertForMaskedLM(bert_config(model), rngs=rngs)
    if model.head != "classifier":
        raise ValueError(f"config.model.head={model.head!r}: use 'classifier' or 'mlm'.")
    return BertClassifier(bert_config(model), model.num_classes, rngs=rngs)


def _check(config: ml_collections.ConfigDict) -> None:
    max_positions = config.model.max_position_embeddings
    if config.data.max_length > max_positions:
        raise ValueError(
            f"config.data.max_length={config.data.max_length} exceeds "
            f"config.model.max_position_embeddings={max_positions}; lower max_length."
        )
    if config.model.hidden_size % config.model.num_heads:
        raise ValueError(
            f"config.model.hidden_size={config.model.hidden_size} is not divisible by "
            f"config.model.num_heads={config.model.num_heads}."
        )
    check_unpad_fraction(config.model.get("unpad_fraction", 1.0))


def check_unpad_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"config.model.unpad_fraction={fraction} must be in (0, 1]: the fraction of a batch's "
                         "padded positions its real tokens are packed into in training; 1.0 turns unpadding off.")


register_model(ModelFamily(
    name="bert",
    build=build,
    modality="text",
    input_keys=TEXT_INPUTS,
    head_name=lambda model: "mlm_head" if model.head == "mlm" else "classifier",
    classifier_head="classifier",
    layer_stack=lambda model: ("encoder/embeddings", "encoder/layers", model.num_layers),
    importers=("hf_bert", "workdir"),
    arch_keys=ARCH_KEYS,
    config_class=BertConfig,
    exporter="bert",
    check=_check,
    display_name="BERT",
))
