"""Optax optimizers from config: optimizer (AdamW, SGD, and for large batches LAMB and LARS), learning-rate
schedule, weight-decay mask, clipping, and what is trained: the trainable-parameter mask (`config.trainable`,
`config.freeze`) and layer-wise learning-rate decay (`config.optimizer.layer_decay`).

The optimizer sees only the trainable parameters: the train step differentiates with respect to them
alone and the optimizer state holds nothing for frozen ones (`lm.state.partition`).
"""

import math
import re

import jax
import ml_collections
import optax

from lm import models
from lm.paths import param_name, path_keys


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `learning_rate`, then linear or cosine decay to 0 at `total_steps`.

    Step s (0-based, the s-th update) uses schedule(s): 0 at s = 0, as Hugging Face's
    `get_linear_schedule_with_warmup` with `warmup_fraction * total_steps` rounded up, as its Trainer rounds
    `warmup_ratio` (tests/test_finetune_parity.py checks every step against it).
    """
    if opt.warmup_steps >= 0:
        warmup = int(opt.warmup_steps)
    else:
        warmup = math.ceil(total_steps * opt.warmup_fraction)  # As the Trainer computes it, float error included.
    warmup = min(warmup, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    peak = opt.learning_rate
    if opt.schedule == "linear":
        decay = optax.linear_schedule(peak, 0.0, decay_steps)
    elif opt.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps)
    elif opt.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(
            f"config.optimizer.schedule={opt.schedule!r} is not known; use 'linear', 'cosine' or 'constant'."
        )
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params) -> object:
    """True for parameters that get weight decay: matrices and embeddings, not biases or norms."""

    def wants_decay(path, leaf) -> bool:
        return leaf.ndim > 1 and not any("norm" in str(key) for key in path_keys(path))

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def _param_names(params) -> list[str]:
    return [param_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _examples(names: list[str], limit: int = 6) -> str:
    """A few parameter paths from different parts of the model, for error messages."""
    picks: list[str] = []
    for depth in (1, 2, 3):
        for name in names:
            prefix = name.split("/")[:depth]
            if len(picks) < limit and not any(pick.split("/")[:depth] == prefix for pick in picks):
                picks.append(name)
    return ", ".join(picks)


def _regex(key: str, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"config.{key}={pattern!r} is not a valid regular expression: {error}.") from None


def _selected(names: list[str], config: ml_collections.ConfigDict) -> list[str]:
    """The parameters `config.trainable` chooses, before `config.freeze`."""
    if config.trainable == "all":
        return names
    if config.trainable == "head":
        head = models.head_name(config.model)
        if head is None:
            raise ValueError(
                f"config.trainable='head': model {config.model.name!r} has no known head; give a regular "
                "expression for the parameters to train instead."
            )
        chosen = [name for name in names if name.split("/")[0] == head]
    else:
        pattern = _regex("trainable", config.trainable)
        chosen = [name for name in names if pattern.search(name)]
    if not chosen:
        raise ValueError(
            f"config.trainable={config.trainable!r} matches no parameter of model {config.model.name!r}; "
            f"parameter paths look like: {_examples(names)}. Use 'all', 'head' or a regular expression on them."
        )
    return chosen


def trainable_mask(params, config: ml_collections.ConfigDict):
    """True for each parameter the optimizer updates; `params` may hold arrays or shapes.

    `config.trainable`: "all"; "head": only the head (`lm.models.head_name`: 'classifier' for BERT, 'head'
    for ResNet, VGG and ViT: linear probing); otherwise a regular expression, and the
    parameters whose '/'-joined path it finds (`re.search`) train. `config.freeze` (a regular expression,
    "" for none) then freezes the parameters it finds among those.
    """
    names = _param_names(params)
    selected = _selected(names, config)
    trained = set(selected)
    if config.freeze:
        freeze = _regex("freeze", config.freeze)
        if not any(freeze.search(name) for name in names):
            raise ValueError(
                f"config.freeze={config.freeze!r} matches no parameter; parameter paths look like: {_examples(names)}."
            )
        trained = {name for name in selected if not freeze.search(name)}
        if not trained:
            raise ValueError(
                f"config.freeze={config.freeze!r} freezes every parameter that config.trainable="
                f"{config.trainable!r} selects ({len(selected)}, e.g. {_examples(selected)}); nothing would train."
            )
    return jax.tree_util.tree_map_with_path(lambda path, _: param_name(path) in trained, params)


def layer_decay_multipliers(params, model: ml_collections.ConfigDict, decay: float):
    """Learning-rate multiplier per parameter for layer-wise decay (Clark et al. 2020; Bao et al. 2022).

    With L layers numbered i = 0 (next to the input) .. L-1: layer i gets decay**(L - i), the embeddings
    decay**(L + 1), everything above the layers (BERT's pooler and classifier, ViT's final norm and
    head) 1. `model` names the family (`lm.models.layer_stack`); only families with a layer stack have layers.
    """
    embeddings, layers, num_layers = models.layer_stack(model)

    def multiplier(path, _) -> float:
        name = param_name(path)
        if name.startswith(embeddings + "/"):
            return decay ** (num_layers + 1)
        if name.startswith(layers + "/"):
            return decay ** (num_layers - int(name.removeprefix(layers + "/").split("/")[0]))
        return 1.0

    return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_layer_decay(model: ml_collections.ConfigDict, decay: float) -> optax.GradientTransformation:
    """Multiplies each update by its `layer_decay_multipliers`: last in the chain, it scales the learning rate."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        multipliers = layer_decay_multipliers(updates, model, decay)
        return jax.tree.map(lambda update, m: update * m, updates, multipliers), state

    return optax.GradientTransformation(init_fn, update_fn)


def _check_layer_decay(opt: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None) -> None:
    if not 0 < opt.layer_decay <= 1:
        raise ValueError(f"config.optimizer.layer_decay={opt.layer_decay} must be in (0, 1]; 1 disables it.")
    if model is None or models.layer_stack(model) is None:
        name = None if model is None else model.name
        stacked = [family.display_name for family in models.families().values() if family.layer_stack]
        which = " and ".join(stacked) if len(stacked) < 3 else ", ".join(stacked[:-1]) + " and " + stacked[-1]
        raise ValueError(
            f"config.optimizer.layer_decay={opt.layer_decay} applies to {which} only, not to model {name!r}; "
            "set it to 1.0."
        )


def create_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int, model: ml_collections.ConfigDict | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer over the trainable parameters, and its learning-rate schedule (for logging).

    `model` (config.model) is needed only for layer-wise learning-rate decay.
    """
    schedule = learning_rate_schedule(opt, total_steps)
    if opt.name == "adamw":
        tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
    elif opt.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
        )
    elif opt.name == "lamb":  # You et al. 2019: Adam's update with decay, scaled per layer by |w| / |update|.
        tx = optax.lamb(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
    elif opt.name == "lars":  # You et al. 2017, as SimCLR uses it: biases and norms get neither decay nor trust ratio.
        tx = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=decay_mask,
                        trust_coefficient=opt.trust_coefficient, trust_ratio_mask=decay_mask, momentum=opt.momentum,
                        nesterov=opt.nesterov)
    else:
        raise ValueError(f"config.optimizer.name={opt.name!r} is not known; use 'adamw', 'sgd', 'lamb' or 'lars'.")
    if opt.layer_decay != 1:
        _check_layer_decay(opt, model)
        tx = optax.chain(tx, scale_by_layer_decay(model, opt.layer_decay))
    if opt.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), tx)
    return tx, schedule
