"""Feedback: labelled examples that come back from serving, written as training data.

Text feedback is appended to a JSONL file whose lines (`{text_field: ..., label_field: ...}`) are valid
`config.data.train_files` input; image feedback is written into an image folder (`<dir>/<label>/<sha1>.<ext>`)
that is valid `config.data.train_dir` input. A fine-tuning run from the served workdir with the old data
plus this file (or folder) learns from what users corrected.
"""

import hashlib
import json
import os
import threading

import tensorflow as tf


class FeedbackLog:
    """Appends feedback lines; safe to call from many request threads."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        parent = os.path.dirname(path)
        if parent:
            tf.io.gfile.makedirs(parent)

    def append(self, records: list[dict]) -> None:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        with self._lock:
            # GFile has no append mode on every file system: read-modify-write keeps it portable; feedback is small.
            old = tf.io.gfile.GFile(self.path).read() if tf.io.gfile.exists(self.path) else ""
            with tf.io.gfile.GFile(self.path + ".tmp", "w") as f:
                f.write(old + text)
            tf.io.gfile.rename(self.path + ".tmp", self.path, overwrite=True)

    def save_image(self, image_bytes: bytes, label: str, extension: str) -> str:
        """Writes `image_bytes` under `<path without .jsonl>_images/<label>/`; returns the file's path."""
        folder = os.path.join(os.path.splitext(self.path)[0] + "_images", label)
        tf.io.gfile.makedirs(folder)
        path = os.path.join(folder, hashlib.sha1(image_bytes).hexdigest() + extension)
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(image_bytes)
        return path
