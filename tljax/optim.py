"""Optimizers and parameter policy.

One mechanism for every per-parameter decision: regular expressions over parameter paths
(``encoder/layer_3/attention/query/kernel``) produce labels; weight-decay masks, frozen subtrees and
learning-rate multipliers are all trees of labels fed to ``optax.multi_transform``.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import jax
import optax
from flax import traverse_util

NO_DECAY_PATTERN = r"(^|/)(bias|scale|mlm_bias)$"  # biases and LayerNorm parameters


def param_paths(params) -> dict[tuple[str, ...], object]:
    return traverse_util.flatten_dict(params)


def path_str(path: tuple[str, ...]) -> str:
    return "/".join(str(p) for p in path)


def label_params(params, patterns: Sequence[tuple[str, str]], default: str):
    """Tree of labels with the structure of ``params``: the label of the first ``(regex, label)`` whose
    regex matches the leaf's path (``re.search``), else ``default``."""
    compiled = [(re.compile(rx), label) for rx, label in patterns]

    def label_of(path):
        s = path_str(path)
        return next((label for rx, label in compiled if rx.search(s)), default)

    flat = param_paths(params)
    return traverse_util.unflatten_dict({path: label_of(path) for path in flat})


def decay_mask(params):
    """True where weight decay applies: matrices and embeddings, not biases or LayerNorm parameters."""
    labels = label_params(params, [(NO_DECAY_PATTERN, "no_decay")], "decay")
    return jax.tree.map(lambda label: label == "decay", labels)


def lr_schedule(train_cfg) -> optax.Schedule:
    """Linear warmup to ``train.lr`` over ``train.warmup_steps``, then cosine (or linear) decay to
    ``train.lr * train.end_lr_ratio`` at ``train.steps``."""
    steps, warmup = int(train_cfg.steps), int(train_cfg.warmup_steps)
    decay = {"cosine": optax.cosine_decay_schedule, "linear": optax.linear_schedule}
    if train_cfg.schedule not in decay:
        raise ValueError(f"train.schedule={train_cfg.schedule!r} unknown; use one of {sorted(decay)}")
    end = train_cfg.lr * train_cfg.end_lr_ratio
    decay_steps = max(steps - warmup, 1)
    if train_cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(train_cfg.lr, decay_steps, alpha=train_cfg.end_lr_ratio)
    else:
        after = optax.linear_schedule(train_cfg.lr, end, decay_steps)
    return optax.join_schedules([optax.linear_schedule(0.0, train_cfg.lr, max(warmup, 1)), after], [warmup])


def adamw(train_cfg, schedule: optax.Schedule, lr_scale: float = 1.0) -> optax.GradientTransformation:
    """AdamW with the decay mask; ``lr_scale`` multiplies the schedule (layer-wise rates)."""
    scaled = schedule if lr_scale == 1.0 else (lambda step: schedule(step) * lr_scale)
    return optax.adamw(scaled, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                       weight_decay=train_cfg.weight_decay, mask=decay_mask)


def make_optimizer(train_cfg, params=None, labels=None,
                   lr_scales: Mapping[str, float] | None = None) -> optax.GradientTransformation:
    """Gradient clipping + AdamW. With ``labels`` (a label tree for ``params``), leaves labelled
    ``"frozen"`` get ``optax.set_to_zero()`` and hold no optimizer state, and each other label gets AdamW
    with its learning-rate multiplier from ``lr_scales`` (default 1)."""
    schedule = lr_schedule(train_cfg)
    clip = optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip else optax.identity()
    if labels is None:
        return optax.chain(clip, adamw(train_cfg, schedule))
    lr_scales = dict(lr_scales or {})
    names = sorted(set(jax.tree.leaves(labels)))
    transforms = {name: optax.set_to_zero() if name == "frozen" else adamw(train_cfg, schedule,
                                                                            lr_scales.get(name, 1.0))
                  for name in names}
    return optax.chain(clip, optax.multi_transform(transforms, labels))
