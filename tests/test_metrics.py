"""Precision, recall, F1 and the confusion matrix equal scikit-learn's on random predictions."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk

from lm import metrics


@pytest.mark.parametrize("num_classes,seed", [(2, 0), (3, 1), (5, 2), (7, 3)])
def test_matches_sklearn(num_classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(num_classes, size=500)
    predictions = rng.integers(num_classes, size=500)
    predictions[:3] = 0  # Some classes may never be predicted when num_classes is large: still defined.
    weights = np.ones(500)
    weights[-40:] = 0  # Padding: must not count.
    confusion = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), jnp.asarray(weights),
                                         num_classes)
    result = metrics.classification_metrics(np.asarray(confusion))
    y, p = labels[:-40], predictions[:-40]
    all_classes = list(range(num_classes))
    np.testing.assert_array_equal(result["confusion_matrix"], sk.confusion_matrix(y, p, labels=all_classes))
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(y, p))
    for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        macro = fn(y, p, average="macro", labels=all_classes, zero_division=0)
        per_class = fn(y, p, average=None, labels=all_classes, zero_division=0)
        assert result[f"{name}_macro"] == pytest.approx(macro)
        np.testing.assert_allclose(result[f"{name}_per_class"], per_class)
    assert result["num_examples"] == 460


def test_class_never_predicted_or_absent():
    confusion = np.array([[5, 0, 0], [2, 0, 0], [0, 0, 0]])
    result = metrics.classification_metrics(confusion)
    assert result["precision_per_class"] == [5 / 7, 0.0, 0.0]
    assert result["recall_per_class"] == [1.0, 0.0, 0.0]
