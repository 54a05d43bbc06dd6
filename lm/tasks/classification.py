"""Classification: cross-entropy with optional label smoothing, and confusion-matrix evaluation.

The task feeds the model the batch keys its family reads (text: token ids and masks; images: pixels),
computes the loss from logits, and says which sums evaluation accumulates. It knows nothing of Orbax,
sharding or data sources.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lm import metrics
from lm.models.registry import ModelFamily
from lm.tasks.registry import TaskSpec, register_task


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    num_classes: int
    input_keys: tuple[str, ...]
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


def _check(config: ml_collections.ConfigDict, family: ModelFamily) -> None:
    head = family.head_name(config.model)
    if head != family.classifier_head:
        raise ValueError(
            f"config.task='classification' needs the {family.display_name} classification head "
            f"{family.classifier_head!r}, but config.model builds {head!r}: configure config.model for "
            "classification (e.g. BERT: config.model.head='classifier'; ResNet: config.model.projection_dims=())."
        )
    if config.model.num_classes < 2:
        raise ValueError(f"config.model.num_classes={config.model.num_classes} must be at least 2.")


register_task(TaskSpec(
    name="classification",
    create=lambda config, family: ClassificationTask(
        num_classes=config.model.num_classes, input_keys=family.input_keys, label_smoothing=config.label_smoothing),
    pipelines={"text": "text_classification", "image": "images"},
    batch_keys=("label",),
    metrics=("accuracy", "loss", "f1_macro", "precision_macro", "recall_macro", "top5_accuracy"),
    best_metric="accuracy",
    check=_check,
    predicts_classes=True,
))
