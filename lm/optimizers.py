"""Optax optimizers from config: optimizer, learning-rate schedule, weight-decay mask, clipping."""

import jax
import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `learning_rate`, then linear or cosine decay to 0 at `total_steps`."""
    if opt.warmup_steps >= 0:
        warmup = int(opt.warmup_steps)
    else:
        warmup = int(round(opt.warmup_fraction * total_steps))
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
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return leaf.ndim > 1 and not any("norm" in n for n in names)

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def create_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(opt, total_steps)
    if opt.name == "adamw":
        tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
    elif opt.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
        )
    else:
        raise ValueError(f"config.optimizer.name={opt.name!r} is not known; use 'adamw' or 'sgd'.")
    if opt.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), tx)
    return tx, schedule
