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

from lm import files


def check_writable(path: str) -> None:
    """Raises OSError, naming config.serving.feedback_path, its value and the fix, unless feedback can be appended
    to `path`: not a directory, its directory there (created if missing, as for other outputs) and writable
    (`lm.files.check_writable`).

    The server checks at its start, before the model loads and compiles: a bad path fails in a moment, not at
    the first feedback a user sends.
    """
    files.check_writable(path, f"config.serving.feedback_path={path!r}",
                         "Set --config.serving.feedback_path to a file in a directory this server can write (a "
                         "missing directory is created), or to '' to turn feedback off.", writes_beside=True)


class FeedbackLog:
    """Appends feedback lines; safe to call from many request threads."""

    def __init__(self, path: str):
        check_writable(path)
        self.path = path
        self._lock = threading.Lock()

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
