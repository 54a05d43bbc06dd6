"""Active-learning selection: rank unlabelled predictions by how unsure the model is.

Scores grow with uncertainty:
- `least_confidence`: 1 - max_c p_c;
- `margin`: 1 - (p_first - p_second), so a small gap between the two best classes scores high;
- `entropy`: -sum_c p_c log p_c (natural log; 0 log 0 = 0).
Ranking is by score, highest first; ties keep input order (a stable sort), so the same predictions
always give the same selection.

Input ids are "FILE line N" for text ("FILE record N" in a JSON array) and the image's path for images, with
local paths made absolute. Ids already labelled (config.serving.exclude_files) are compared after the same
resolution (`canonical_id`), so a file named by another relative path, or an id written before ids were
absolute, still matches when read from the same directory.
"""

import json
import logging
import re
from collections.abc import Iterable

import numpy as np

from lm import files

log = logging.getLogger(__name__)

STRATEGIES = ("least_confidence", "margin", "entropy")


def scores(probabilities: np.ndarray, strategy: str) -> np.ndarray:
    """Uncertainty of each row of `probabilities` [n, classes] under `strategy` (higher: less sure)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"Selection needs probabilities of shape [n, classes >= 2]; got {p.shape}.")
    if strategy == "least_confidence":
        return 1.0 - p.max(axis=1)
    if strategy == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if strategy == "entropy":
        logs = np.log(np.where(p > 0, p, 1.0))
        return -(p * logs).sum(axis=1)
    raise ValueError(f"Selection strategy {strategy!r} is not known; use one of {STRATEGIES}.")


def rank(probabilities: np.ndarray, strategy: str, top_k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `top_k` most uncertain rows, most uncertain first; rows where `exclude` is True never
    appear. Equal scores keep input order."""
    if top_k <= 0:
        raise ValueError(f"Selection needs a positive number of examples to select; got {top_k}.")
    s = scores(probabilities, strategy)
    order = np.argsort(-s, kind="stable")
    if exclude is not None:
        order = order[~np.asarray(exclude, dtype=bool)[order]]
    return order[:top_k]


def read_labelled_ids(paths: Iterable[str], id_field: str = "id") -> set[str]:
    """Ids already labelled: from JSONL files (`id_field` of each object) or plain text files (one id a line)."""
    import tensorflow as tf

    ids: set[str] = set()
    for path in paths:
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"config.serving.exclude_files: the labelled-ids file {path!r} does not exist; "
                                    "fix the path, or set the key to '' to exclude nothing.")
        with tf.io.gfile.GFile(path) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if path.endswith(".jsonl"):
                    try:
                        ids.add(str(json.loads(line)[id_field]))
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"config.serving.exclude_files: {path}:{number}: expected a JSON object "
                                         f"with an {id_field!r} field ({e}).") from None
                else:
                    ids.add(line)
    return ids


_ROW_ID = re.compile(r"^(?P<path>.+) (?P<unit>line|record) (?P<number>\d+)$")


def canonical_id(row_id: str) -> str:
    """An input id with its path made absolute: "../tmp/x.tsv line 3" and "/tmp/x.tsv line 3" are one row."""
    match = _ROW_ID.match(row_id)
    if match:
        return f"{files.absolute_path(match['path'])} {match['unit']} {match['number']}"
    return files.absolute_path(row_id)


def excluded_rows(input_ids: list[str], labelled_ids: set[str]) -> np.ndarray:
    """True for each input id that is among `labelled_ids` (both compared by `canonical_id`). Logs how many of
    the labelled ids match an input id, and warns when none does (showing one id of each side)."""
    inputs = [canonical_id(i) for i in input_ids]
    labelled = {canonical_id(i): i for i in sorted(labelled_ids)}
    if labelled:
        _log_matches(labelled, input_ids, set(inputs))
    return np.array([i in labelled for i in inputs], dtype=bool)


def _log_matches(labelled: dict[str, str], input_ids: list[str], inputs: set[str]) -> None:
    """`labelled` maps each canonical labelled id to its spelling in the exclude file."""
    unmatched = [spelt for canonical, spelt in labelled.items() if canonical not in inputs]
    if len(unmatched) == len(labelled):
        example = unmatched[0]
        read_as = canonical_id(example)
        shown = repr(example) + (f" (read as {read_as!r})" if read_as != example else "")
        log.warning("config.serving.exclude_files: none of its %d labelled ids matches an input id, so nothing is "
                    "excluded: e.g. labelled %s, input %r. Ids are 'FILE line N' for text and the image's path for "
                    "images; relative paths are read from the current directory.",
                    len(labelled), shown, input_ids[0] if input_ids else None)
        return
    message = f"excluded {len(labelled) - len(unmatched)} of {len(labelled)} labelled ids"
    if unmatched:
        message += f"; {len(unmatched)} match no input id, e.g. {unmatched[0]!r}"
    log.info("config.serving.exclude_files: %s.", message)


def selection_records(predictions: list[dict], probabilities: np.ndarray, strategy: str, top_k: int,
                      exclude: np.ndarray | None = None) -> list[dict]:
    """The ranked records of the `top_k` most uncertain predictions, leaving out rows where `exclude` is True
    (`excluded_rows`).

    `predictions` are predict's records (id, input, label, probabilities, step) in the order of the rows of
    `probabilities`. Each selected record gains `score`, `strategy` and `rank` (1 = most uncertain).
    """
    s = scores(probabilities, strategy)
    chosen = rank(probabilities, strategy, top_k, exclude)
    return [dict(predictions[i], score=float(s[i]), strategy=strategy, rank=r)
            for r, i in enumerate(chosen, 1)]


def label_studio_task(record: dict, label_names: tuple[str, ...], input_key: str) -> dict:
    """A Label Studio import task: the input under `data[input_key]` and the model's guess as a prediction."""
    label = record["label"]
    return {
        "data": {input_key: record["input"], "id": record["id"]},
        "predictions": [{
            "model_version": f"step {record['step']}",
            "score": 1.0 - record["score"] if record["strategy"] == "least_confidence" else None,
            "result": [{"from_name": "label", "to_name": input_key, "type": "choices",
                        "value": {"choices": [label]}}],
        }],
        "meta": {"uncertainty": record["score"], "strategy": record["strategy"], "rank": record["rank"],
                 "label_names": list(label_names)},
    }
