"""A model-free Servable for the server tests: text in, deterministic probabilities out, no JAX.

Run as a script it serves on a free port of 127.0.0.1, prints the port, and drains on SIGTERM (the
SIGTERM test runs it in a subprocess).
"""

import sys
import threading
import time

import numpy as np

from lm.serving.server import BadInstance


def probabilities_of(text: str) -> np.ndarray:
    """Three classes; the logits come from the text's characters, so every text has its own answer."""
    logits = np.array([len(text) % 5, sum(map(ord, text)) % 7, text.count("a")], dtype=np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


class FakeTextServable:
    name = "fake"
    version = 7
    label_names = ("neg", "neu", "pos")

    def __init__(self, delay_s: float = 0.02):
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def parse(self, instance):
        text = instance.get("text") if isinstance(instance, dict) else instance
        if not isinstance(text, str):
            raise BadInstance('expected a string or {"text": string}.')
        if not text.strip():
            raise BadInstance("the text is empty.")
        return text

    def predict(self, examples: list) -> np.ndarray:
        with self._lock:
            self.batch_sizes.append(len(examples))
        time.sleep(self.delay_s)
        if "explode" in examples:
            raise RuntimeError("the model cannot take 'explode'")
        return np.stack([probabilities_of(t) for t in examples])

    def feedback_record(self, instance, label, feedback):
        return {"text": self.parse(instance), "label": label}


if __name__ == "__main__":
    from lm.serving import monitor, server

    servable = FakeTextServable(delay_s=float(sys.argv[1]))
    options = server.ServeOptions(port=0, max_batch_size=4, max_wait_ms=5)
    model_server = server.ModelServer(servable, options, monitor.ServingMetrics(servable.label_names, 4))
    model_server.install_sigterm()
    print(model_server.address[1], flush=True)
    model_server.serve_forever()
    print("stopped", flush=True)
