"""Classification metrics from a confusion matrix, and throughput / MFU / where a step's time goes.

Evaluation accumulates a confusion matrix on device (padded examples carry weight 0) and these pure
numpy functions turn it into accuracy, precision, recall and F1, macro and per class.
Convention (scikit-learn's with zero_division=0): rows are true labels, columns predictions, and a
class with no predicted (or no true) examples gets precision (or recall) 0.
"""

import contextlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import hardware


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
    """Measured FLOP/s of a jitted square matmul on the default device: the peak where no datasheet peak is known."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times))


def mfu_peak(config: ml_collections.ConfigDict, device: jax.Device | None = None) -> hardware.Peak:
    """The peak MFU is quoted against: config.peak_flops_per_device, else the datasheet peak of the device kind
    for config.model.dtype (`lm.hardware`), else (CPU, unknown kinds) a measured matmul, labelled as such."""
    if config.peak_flops_per_device > 0:
        return hardware.Peak(config.peak_flops_per_device, "config.peak_flops_per_device")
    device = jax.local_devices()[0] if device is None else device
    peak = hardware.datasheet_peak(device.device_kind, config.model.dtype)
    if peak is not None:
        return peak
    size = 1024
    measured = matmul_peak_flops(size=size, repeats=5, dtype=jnp.dtype(config.model.dtype))
    return hardware.Peak(measured, f"measured {size}x{size} {config.model.dtype} matmul on {device.device_kind!r} "
                         "(no datasheet peak for this device kind)", measured=True)


def mfu_name(peak: hardware.Peak) -> str:
    """The scalar's name: `mfu` against a datasheet (or configured) peak, `mfu_vs_measured_matmul` otherwise."""
    return "mfu_vs_measured_matmul" if peak.measured else "mfu"


class WindowTimer:
    """Where a logging window's wall time went: waiting for input, and one step timed alone on the device.

    The loop wraps its `next(batches)` and host-to-device transfer in `waiting_for_input()`. The device time
    of a step is measured on the last step of each window, which the loop times alone (`time_step`): the
    queue of dispatched steps is drained first, then that one step runs from dispatch to completion. JAX
    dispatches steps ahead of the device, so input waits can overlap device work: the input-wait fraction is
    the share of the window the host loop was blocked on input, an upper bound on the device's idle share.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.input_seconds = 0.0
        self.device_seconds: float | None = None

    @contextlib.contextmanager
    def waiting_for_input(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.input_seconds += time.perf_counter() - start

    def time_step(self, run_step, *args):
        """`run_step(*args)` alone on the device: drains what was dispatched before, then times it to completion."""
        jax.block_until_ready(args)
        start = time.perf_counter()
        result = jax.block_until_ready(run_step(*args))
        self.device_seconds = time.perf_counter() - start
        return result

    def scalars(self, steps: int) -> dict[str, float]:
        """The window's `seconds_per_step`, `input_wait_fraction`, and `device_seconds_per_step` if one was timed."""
        seconds = max(time.perf_counter() - self.start, 1e-9)
        scalars = {"seconds_per_step": seconds / max(steps, 1),
                   "input_wait_fraction": min(self.input_seconds / seconds, 1.0)}
        if self.device_seconds is not None:
            scalars["device_seconds_per_step"] = self.device_seconds
        return scalars
