"""Synthetic text classification data that tests write themselves (no network)."""

import csv
import pathlib

import numpy as np

# Ordinary words that are whole tokens in the BERT uncased vocabulary.
FILLER = ("the", "a", "movie", "film", "story", "was", "and", "it", "very", "quite", "actor", "plot", "scene",
          "music", "ending", "really", "this", "that", "with", "of", "time", "people", "director", "day")
POSITIVE = ("great", "wonderful", "excellent", "loved")
NEGATIVE = ("terrible", "awful", "boring", "hated")


def sentiment_rows(num: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label name) rows: the label is decided by which cue word the sentence holds."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=int(rng.integers(4, 12))))
        cue = rng.choice(POSITIVE if label else NEGATIVE)
        words.insert(int(rng.integers(len(words) + 1)), cue)
        rows.append((" ".join(words), "positive" if label else "negative"))
    return rows


def write_csv(path: pathlib.Path, rows: list[tuple[str, str]]) -> pathlib.Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return path


def write_vocab(path: pathlib.Path) -> pathlib.Path:
    """A small WordPiece vocabulary holding the special tokens and every word the synthetic rows use.

    Tests that train from scratch use it: a 30k-entry embedding would dominate their compile and step time.
    """
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *POSITIVE, *NEGATIVE, "fine", "."]
    tokens += list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")  # Unique, in order.
    return path


def write_corpus(path: pathlib.Path, num: int, seed: int = 0) -> pathlib.Path:
    """Raw text, one document a line, for masked-LM pretraining: the sentences of `sentiment_rows`."""
    path.write_text("\n".join(text for text, _ in sentiment_rows(num, seed)) + "\n")
    return path
