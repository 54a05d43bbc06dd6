"""Live metrics of a served model in the Prometheus text format, and drift against the validation set.

`ServingMetrics` is thread-safe: the HTTP handlers and the batching thread update it, `GET /metrics`
renders it. Drift compares a sliding window of live predictions with the reference the export recorded
(the validation set's predicted-class distribution and confidence histogram) by the population
stability index, PSI = sum_i (p_i - q_i) ln(p_i / q_i), with each bin floored at `_PSI_FLOOR` so that
an empty bin stays finite. PSI under 0.1 is usually read as stable, over 0.25 as a shift.
"""

import collections
import logging
import threading

import numpy as np

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BINS = 10  # Equal-width bins of max-probability over [0, 1].
_PSI_FLOOR = 1e-4


def confidence_histogram(confidences: np.ndarray) -> np.ndarray:
    """Fractions of `confidences` (max class probabilities) in CONFIDENCE_BINS equal bins over [0, 1]."""
    counts, _ = np.histogram(np.clip(confidences, 0.0, 1.0), bins=CONFIDENCE_BINS, range=(0.0, 1.0))
    return counts / max(counts.sum(), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins (each normalised here)."""
    p = np.maximum(np.asarray(actual, np.float64), 0.0)
    q = np.maximum(np.asarray(expected, np.float64), 0.0)
    p = np.maximum(p / max(p.sum(), 1e-12), _PSI_FLOOR)
    q = np.maximum(q / max(q.sum(), 1e-12), _PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def reference_profile(probabilities: np.ndarray) -> dict:
    """What drift is measured against, from the validation set's predicted probabilities [n, classes]."""
    probabilities = np.asarray(probabilities)
    classes = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    return {
        "class_distribution": (classes / max(classes.sum(), 1)).tolist(),
        "confidence_histogram": confidence_histogram(probabilities.max(axis=1)).tolist(),
        "num_examples": int(probabilities.shape[0]),
    }


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # The last one is +Inf.
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        self.counts[index] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{le="{le}"}} {running}')
        lines += [f"{name}_sum {self.total:.6f}", f"{name}_count {self.count}"]
        return lines


class ServingMetrics:
    """Counters, histograms and gauges of one served model, plus the drift score."""

    def __init__(self, label_names: tuple[str, ...], max_batch_size: int, reference: dict | None = None,
                 drift_window: int = 1000, drift_threshold: float = 0.25):
        self._lock = threading.Lock()
        self.label_names = tuple(label_names)
        self.requests = collections.Counter()  # HTTP status code -> count
        self.latency = _Histogram(LATENCY_BUCKETS_S)
        self.batch_size = _Histogram(tuple(float(2**i) for i in range(int(np.log2(max(max_batch_size, 1))) + 1)))
        self.predicted = collections.Counter()
        self.confidence_sum = 0.0
        self.queue_depth = 0
        self.reference = reference
        self.drift_threshold = drift_threshold
        self._window = collections.deque(maxlen=drift_window)  # (class index, confidence)
        self._warned = False

    def observe_request(self, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[status] += 1
            self.latency.observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(float(size))

    def set_queue_depth(self, depth: int) -> None:
        with self._lock:
            self.queue_depth = depth

    def observe_predictions(self, probabilities: np.ndarray) -> None:
        classes = probabilities.argmax(axis=1)
        confidences = probabilities.max(axis=1)
        with self._lock:
            for c, p in zip(classes.tolist(), confidences.tolist()):
                self.predicted[c] += 1
                self.confidence_sum += p
                self._window.append((c, p))
        drift = self.drift()
        if drift is not None and max(drift.values()) > self.drift_threshold and not self._warned:
            self._warned = True
            log.warning("Prediction drift: PSI %s over the last %d predictions exceeds %.3g against the "
                        "validation set.", {k: round(v, 4) for k, v in drift.items()}, len(self._window),
                        self.drift_threshold)

    def drift(self) -> dict[str, float] | None:
        """PSI of the live window against the reference, per view; None without a reference or predictions."""
        with self._lock:
            window = list(self._window)
        if self.reference is None or not window:
            return None
        classes = np.bincount([c for c, _ in window], minlength=len(self.label_names))
        confidences = confidence_histogram(np.array([p for _, p in window]))
        return {
            "class": psi(np.array(self.reference["class_distribution"]), classes),
            "confidence": psi(np.array(self.reference["confidence_histogram"]), confidences),
        }

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format (version 0.0.4)."""
        drift = self.drift()
        with self._lock:
            lines = ["# HELP lm_requests_total Requests by HTTP status code.", "# TYPE lm_requests_total counter"]
            lines += [f'lm_requests_total{{code="{code}"}} {n}' for code, n in sorted(self.requests.items())]
            lines += self.latency.render("lm_request_latency_seconds", "Request latency, arrival to response.")
            lines += self.batch_size.render("lm_batch_size", "Instances per model batch (before padding).")
            lines += ["# HELP lm_queue_depth Instances waiting for a batch.", "# TYPE lm_queue_depth gauge",
                      f"lm_queue_depth {self.queue_depth}"]
            lines += ["# HELP lm_predictions_total Predictions by predicted class.",
                      "# TYPE lm_predictions_total counter"]
            lines += [f'lm_predictions_total{{label="{self.label_names[c]}"}} {self.predicted[c]}'
                      for c in range(len(self.label_names))]
            total = sum(self.predicted.values())
            lines += ["# HELP lm_mean_confidence Mean max class probability of all predictions.",
                      "# TYPE lm_mean_confidence gauge",
                      f"lm_mean_confidence {self.confidence_sum / max(total, 1):.6f}"]
            if drift is not None:
                lines += ["# HELP lm_drift_psi Population stability index of recent predictions vs validation.",
                          "# TYPE lm_drift_psi gauge"]
                lines += [f'lm_drift_psi{{view="{view}"}} {value:.6f}' for view, value in drift.items()]
        return "\n".join(lines) + "\n"
