"""Masked language modelling (Devlin et al. 2019): cross-entropy over the masked positions only.

Batches come masked from the pipeline (`input_pipeline.masking`): `input_ids` (with [MASK], random and kept
tokens), `mlm_labels` (the original ids) and `mlm_weights` (1.0 at the positions to predict, else 0.0).
Evaluation reports the masked-token loss, accuracy and perplexity (exp of the mean loss per masked token).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lm.models.registry import ModelFamily
from lm.tasks.registry import TaskSpec, register_task


@dataclasses.dataclass(frozen=True)
class MaskedLMTask:
    input_keys: tuple[str, ...]

    def logits(self, model, batch: dict, *, deterministic: bool, rngs=None) -> jax.Array:
        return model(*(batch[key] for key in self.input_keys), deterministic=deterministic, rngs=rngs)

    def _per_token(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(losses, correct, weights), each [batch, length]; weights are 0 where nothing is predicted."""
        labels, weights = batch["mlm_labels"], batch["mlm_weights"]
        if "weight" in batch:  # Evaluation: padding blocks count nothing.
            weights = weights * batch["weight"][:, None]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return losses, correct, weights

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        """Mean cross-entropy over the batch's masked tokens."""
        losses, correct, weights = self._per_token(logits, batch)
        count = jnp.maximum(jnp.sum(weights), 1.0)
        return jnp.sum(losses * weights) / count, {"accuracy": jnp.sum(correct * weights) / count}

    def eval_sums(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
        losses, correct, weights = self._per_token(logits, batch)
        return {"loss_sum": jnp.sum(losses * weights), "correct_sum": jnp.sum(correct * weights),
                "masked_tokens": jnp.sum(weights)}

    def finalize(self, sums: dict) -> dict:
        count = float(sums["masked_tokens"])
        if count == 0:
            raise ValueError("Masked-LM evaluation saw no masked token: the split is too small to evaluate.")
        loss = float(sums["loss_sum"]) / count
        return {"loss": loss, "accuracy": float(sums["correct_sum"]) / count, "perplexity": math.exp(min(loss, 80.0)),
                "num_masked_tokens": int(count)}


def _check(config: ml_collections.ConfigDict, family: ModelFamily) -> None:
    head = family.head_name(config.model)
    if head != "mlm_head":
        raise ValueError(
            "config.task='mlm' needs a model built for masked LM, with an 'mlm_head' (BERT: config.model.name="
            f"'bert' and config.model.head='mlm'); config.model.name={family.name!r} builds {head!r}."
        )


register_task(TaskSpec(
    name="mlm",
    create=lambda config, family: MaskedLMTask(input_keys=family.input_keys),
    pipelines={"text": "text_corpus"},
    batch_keys=("mlm_labels", "mlm_weights"),
    metrics=("loss", "accuracy", "perplexity"),
    best_metric="loss",
    best_mode="min",
    check=_check,
))
