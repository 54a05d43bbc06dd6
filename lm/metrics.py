"""Classification metrics from a confusion matrix, and throughput / MFU.

Evaluation accumulates a confusion matrix on device (padded examples carry weight 0) and these pure
numpy functions turn it into accuracy, precision, recall and F1, macro and per class.
Convention (scikit-learn's with zero_division=0): rows are true labels, columns predictions, and a
class with no predicted (or no true) examples gets precision (or recall) 0.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, predictions: jax.Array, weights: jax.Array, num_classes: int) -> jax.Array:
    """[num_classes, num_classes] weighted counts; rows = true label, columns = prediction."""
    index = labels * num_classes + predictions
    counts = jnp.zeros(num_classes * num_classes, jnp.float32).at[index].add(weights.astype(jnp.float32))
    return counts.reshape(num_classes, num_classes)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def classification_metrics(confusion: np.ndarray) -> dict[str, float | list]:
    """Accuracy, macro and per-class precision/recall/F1, and the matrix itself, from a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    total = confusion.sum()
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "precision_per_class": precision.tolist(),
        "recall_per_class": recall.tolist(),
        "f1_per_class": f1.tolist(),
        "confusion_matrix": confusion.astype(np.int64).tolist(),
        "num_examples": int(total),
    }


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The scalar entries plus per-class values flattened (`f1/class_0`), for TensorBoard."""
    scalars = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            scalars[key] = float(value)
        elif key.endswith("_per_class"):
            for index, v in enumerate(value):
                scalars[f"{key[: -len('_per_class')]}/class_{index}"] = float(v)
    return scalars


def matmul_peak_flops(size: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
    """Measured FLOP/s of a jitted square matmul on the default device: the peak MFU is quoted against."""
    import time

    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times))
