"""SimCLR (Chen et al. 2020): contrastive learning of image features from two augmented views of each image.

Batches carry `image` and `image_view2` (`input_pipeline.image_classification` with `data.views=2`). Both
views go through the model in one pass (so BatchNorm normalises over the whole global batch, as SimCLR's
global BN does), whose projection head gives one vector per view. NT-Xent: for each of the 2N vectors the
positive is the other view of its image and the negatives are the other 2N - 2 vectors of the global batch;
the loss is the cross-entropy of picking the positive from cosine similarities / temperature. Inside the
jitted step the batch is the global one, so negatives come from every device. Evaluation reports the loss
and `accuracy`, the fraction of vectors whose nearest other vector is their positive.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from lm.models.registry import ModelFamily
from lm.tasks.registry import TaskSpec, register_task


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float, weights: jax.Array | None = None) -> tuple:
    """(per-vector losses [2N], per-vector positive-is-top-1 [2N]) of the NT-Xent loss of views z1, z2 [N, d].

    `weights` [N] (evaluation padding: 0) removes an image from the batch: its vectors are nobody's negatives
    (and their own losses are for the caller to weight out).
    """
    n = z1.shape[0]
    z = jnp.concatenate([z1, z2]).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    logits = z @ z.T / temperature
    excluded = jnp.eye(2 * n, dtype=bool)
    if weights is not None:
        excluded = excluded | (jnp.concatenate([weights, weights]) == 0)[None, :]
    logits = jnp.where(excluded, -jnp.inf, logits)
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    losses = -jnp.take_along_axis(log_probs, positives[:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(logits, axis=-1) == positives).astype(jnp.float32)
    return losses, correct


@dataclasses.dataclass(frozen=True)
class SimCLRTask:
    temperature: float = 0.1

    def logits(self, model, batch: dict, *, deterministic: bool, rngs=None) -> jax.Array:
        """The projections of both views, [2N, d]: the first N of `image`, the next N of `image_view2`."""
        images = jnp.concatenate([batch["image"], batch["image_view2"]])
        return model(images, deterministic=deterministic, rngs=rngs)

    def loss(self, projections: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        z1, z2 = jnp.split(projections, 2)
        losses, correct = nt_xent(z1, z2, self.temperature)
        return losses.mean(), {"accuracy": correct.mean()}

    def eval_sums(self, projections: jax.Array, batch: dict) -> dict[str, jax.Array]:
        z1, z2 = jnp.split(projections, 2)
        losses, correct = nt_xent(z1, z2, self.temperature, batch["weight"])
        weights = jnp.concatenate([batch["weight"], batch["weight"]])
        losses = jnp.where(weights > 0, losses, 0.0)  # A padded image's own loss is -log(0): keep it out.
        return {"loss_sum": jnp.sum(losses * weights), "correct_sum": jnp.sum(correct * weights),
                "weight_sum": jnp.sum(weights)}

    def finalize(self, sums: dict) -> dict:
        total = max(float(sums["weight_sum"]), 1.0)
        return {"loss": float(sums["loss_sum"]) / total, "accuracy": float(sums["correct_sum"]) / total,
                "num_examples": int(float(sums["weight_sum"]) / 2)}


def _check(config: ml_collections.ConfigDict, family: ModelFamily) -> None:
    head = family.head_name(config.model)
    if head != "projection" or config.data.views != 2:
        raise ValueError(
            "config.task='simclr' needs a model with a projection head and two views of each image: a 'projection' "
            f"head (ResNet: config.model.projection_dims non-empty; config.model.name={family.name!r} builds "
            f"{head!r}) and config.data.views=2 (is {config.data.views!r})."
        )


register_task(TaskSpec(
    name="simclr",
    create=lambda config, family: SimCLRTask(temperature=config.temperature),
    pipelines={"image": "images"},
    batch_keys=("image", "image_view2"),
    metrics=("loss", "accuracy"),
    best_metric="loss",
    best_mode="min",
    check=_check,
))
