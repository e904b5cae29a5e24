"""Optimiser of training: AdamW with warm-up, decay or reduce-on-plateau, and gradient clipping."""

from __future__ import annotations

import jax
import optax

from hamjax.train.config import TrainConfig

__all__ = ["learning_rate_schedule", "make_optimizer", "plateau_scale"]


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """Step -> learning rate of ``config.schedule`` over ``total_steps`` (before any plateau
    factor): linear warm-up, then cosine or exponential decay, or constant for "plateau"."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, warmup, warmup + decay_steps, config.final_learning_rate
        )
    if config.schedule == "exponential":
        rate = max(config.final_learning_rate, 1e-30) / config.learning_rate
        return optax.warmup_exponential_decay_schedule(
            0.0,
            config.learning_rate,
            warmup,
            decay_steps,
            rate,
            end_value=config.final_learning_rate,
        )
    return optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1))


def make_optimizer(
    config: TrainConfig, total_steps: int, steps_per_epoch: int = 1
) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
    """AdamW with warm-up, decay (or reduce-on-plateau) and global-norm clipping.

    Returns:
        The optimiser (its ``update`` takes ``value=loss`` for the plateau schedule) and the
        base learning-rate schedule (step -> learning rate, before any plateau factor).
    """
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if config.gradient_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.gradient_clip_norm))
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
    if config.schedule == "plateau":
        parts.append(
            optax.contrib.reduce_on_plateau(
                factor=config.plateau_factor,
                patience=config.plateau_patience,
                accumulation_size=max(steps_per_epoch, 1),
            )
        )
    return optax.chain(*parts), schedule


def plateau_scale(opt_state) -> float:
    """The current factor of the reduce-on-plateau schedule in ``opt_state`` (1 without it)."""
    for leaf in jax.tree.leaves(
        opt_state, is_leaf=lambda x: type(x).__name__ == "ReduceLROnPlateauState"
    ):
        if type(leaf).__name__ == "ReduceLROnPlateauState":
            return float(leaf.scale)
    return 1.0
