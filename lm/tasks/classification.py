"""Classification: cross-entropy with optional label smoothing, and confusion-matrix evaluation.

The task knows which batch keys the model reads (text: token ids and masks; images: pixels), how the
loss is computed from logits, and which sums evaluation accumulates. It knows nothing of Orbax,
sharding or data sources.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from lm import metrics

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_INPUTS = ("image",)


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    num_classes: int
    input_keys: tuple[str, ...] = TEXT_INPUTS
    label_smoothing: float = 0.0

    def logits(self, model, batch: dict, *, deterministic: bool, rngs=None) -> jax.Array:
        return model(*(batch[key] for key in self.input_keys), deterministic=deterministic, rngs=rngs)

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        """Mean cross-entropy over the batch (train batches carry no padding).

        With mixup the batch carries soft targets, `label_probs`; accuracy is then against `label`,
        the dominant class.
        """
        labels = batch["label"]
        targets = batch["label_probs"] if "label_probs" in batch else jax.nn.one_hot(labels, self.num_classes)
        if self.label_smoothing > 0:
            targets = optax.smooth_labels(targets, self.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = (jnp.argmax(logits, -1) == labels).mean()
        return loss, {"accuracy": accuracy}

    def eval_sums(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
        """Sums over the batch that evaluation adds up; padded examples have weight 0."""
        labels = batch["label"]
        weight = batch["weight"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        predictions = jnp.argmax(logits, -1)
        sums = {
            "loss_sum": jnp.sum(losses * weight),
            "weight_sum": jnp.sum(weight),
            "confusion": metrics.confusion_matrix(labels, predictions, weight, self.num_classes),
        }
        if self.num_classes > 5:
            top5 = jax.lax.top_k(logits, 5)[1]
            sums["top5_sum"] = jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * weight)
        return sums

    def finalize(self, sums: dict) -> dict:
        """Host-side metrics from the accumulated sums."""
        result = metrics.classification_metrics(sums["confusion"])
        total = max(float(sums["weight_sum"]), 1.0)
        result["loss"] = float(sums["loss_sum"]) / total
        if "top5_sum" in sums:
            result["top5_accuracy"] = float(sums["top5_sum"]) / total
        return result
