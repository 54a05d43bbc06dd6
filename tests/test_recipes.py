"""Folder and arrays images get the from-scratch recipe without init_from and the fine-tuning one with it; the
choice is logged and recorded, and a key set explicitly wins over either recipe."""

import logging

import pytest

from configs import bert_sentiment, vision_classification
from lm import config_checks, recipes


@pytest.mark.parametrize("dataset", ["folder", "arrays"])
def test_from_scratch_without_init_from(dataset, caplog):
    config = vision_classification.get_config(f"resnet_small,{dataset}")
    assert config.optimizer.name is None and config.optimizer.learning_rate is None  # Left to the recipe.
    with caplog.at_level(logging.INFO, logger="lm.recipes"):
        resolved = config_checks.resolved_copy(config)
    assert (resolved.optimizer.name, resolved.optimizer.learning_rate) == ("adamw", 2e-3)
    assert resolved.recipe == "scratch"  # config.json records the choice.
    assert "Recipe 'scratch' (config.init_from is empty)" in caplog.text and "--config.recipe=finetune" in caplog.text


def test_fine_tuning_with_init_from(caplog):
    config = vision_classification.get_config("resnet_small,folder")
    config.init_from = "/models/resnet"  # recipes.apply reads only whether it is set.
    with caplog.at_level(logging.INFO, logger="lm.recipes"):
        recipes.apply(config)
    assert (config.optimizer.name, config.optimizer.learning_rate, config.recipe) == ("sgd", 0.01, "finetune")
    assert "Recipe 'finetune' (config.init_from is set)" in caplog.text


def test_explicit_choice_and_explicit_keys_win(caplog):
    config = vision_classification.get_config("resnet_small,arrays")
    config.recipe = "finetune"
    config.optimizer.learning_rate = 5e-3  # As --config.optimizer.learning_rate=5e-3 would.
    with caplog.at_level(logging.INFO, logger="lm.recipes"):
        resolved = config_checks.resolved_copy(config)
    assert (resolved.optimizer.name, resolved.optimizer.learning_rate) == ("sgd", 5e-3)
    assert "set explicitly: optimizer.learning_rate=0.005" in caplog.text


def test_bad_recipe_names():
    config = vision_classification.get_config("resnet_small,arrays")
    config.recipe = "warm"
    with pytest.raises(ValueError, match=r"config.recipe='warm': use 'auto' or one of \['finetune', 'scratch'\]"):
        config_checks.resolved_copy(config)
    config = bert_sentiment.get_config("mini,imdb")
    config.recipe = "scratch"
    with pytest.raises(ValueError, match="this config has one recipe"):
        config_checks.resolved_copy(config)


def test_other_data_sets_keep_their_one_recipe():
    for arg in ("resnet18_cifar,cifar10", "resnet_small,digits", "resnet_small,folder,smoke"):
        config = vision_classification.get_config(arg)
        assert not config.recipes and config.optimizer.name in ("sgd", "adamw")
