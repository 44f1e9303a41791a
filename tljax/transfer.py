"""Transfer strategies as parameter policy: which layer groups train, when, and at what rate.

Every strategy is the same mechanism: regular expressions over parameter paths give each leaf a layer
group (``embeddings``, ``layer_0`` … ``layer_{L-1}``, ``head``); a plan gives each group a state
(frozen, or trainable from step s with a learning-rate multiplier); ``optax.multi_transform`` applies
``optax.set_to_zero()`` to frozen groups (no optimizer state) and AdamW to the others.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax

from tljax import optim

STRATEGIES = ("features", "light", "full", "progressive")


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """frozen: never updated, holds no optimizer state. unfreeze_step: first step at which the group
    is updated (progressive). lr_scale: multiplier of the base learning rate (layer-wise decay)."""

    frozen: bool = False
    unfreeze_step: int = 0
    lr_scale: float = 1.0


def group_patterns(num_layers: int) -> list[tuple[str, str]]:
    """(regex, group) pairs over paths like ``encoder/layer_3/mlp/output/kernel``; anything not matched
    (pooler, classifier, GPT's final LayerNorm, MLM head) is the ``head`` group."""
    backbone = r"^(encoder|decoder)/"
    patterns = [(backbone + r"embeddings/", "embeddings")]
    patterns += [(backbone + rf"layer_{i}/", f"layer_{i}") for i in range(num_layers)]
    return patterns


def layer_groups(params, num_layers: int):
    """Tree of group names with the structure of ``params``."""
    return optim.label_params(params, group_patterns(num_layers), default="head")


def group_order(num_layers: int) -> list[str]:
    """Groups from the top of the network down: head, layer_{L-1}, …, layer_0, embeddings."""
    return ["head"] + [f"layer_{i}" for i in reversed(range(num_layers))] + ["embeddings"]


def plan_strategy(strategy: str, num_layers: int, *, unfrozen_layers: int = 2, layer_lr_decay: float = 1.0,
                  unfreeze_every: int = 50) -> dict[str, GroupPlan]:
    """The GroupPlan of every group.

    light: embeddings and layers below the top ``unfrozen_layers`` frozen. full: all trainable.
    progressive: the head trains from step 0 and one more group from the top every ``unfreeze_every``
    steps (ULMFiT gradual unfreezing). layer_lr_decay d (ELECTRA-style): the head and the top layer get the
    base rate, each layer below d times the one above, the embeddings d^L.
    """
    if strategy not in STRATEGIES or strategy == "features":
        raise ValueError(f"strategy={strategy!r} has no layer plan; use one of light, full, progressive")
    if not 0.0 < layer_lr_decay <= 1.0:
        raise ValueError(f"layer_lr_decay={layer_lr_decay} must be in (0, 1]")
    if strategy == "light" and not 0 <= unfrozen_layers <= num_layers:
        raise ValueError(f"unfrozen_layers={unfrozen_layers} must be between 0 and the model's {num_layers} layers")
    plan = {}
    for depth, group in enumerate(group_order(num_layers)):
        # depth 0 = head, 1 = top layer, …, L = layer_0, L + 1 = embeddings
        scale = layer_lr_decay ** max(depth - 1, 0)
        if strategy == "light":
            plan[group] = GroupPlan(frozen=depth > unfrozen_layers, lr_scale=scale)
        elif strategy == "progressive":
            plan[group] = GroupPlan(unfreeze_step=depth * unfreeze_every, lr_scale=scale)
        else:
            plan[group] = GroupPlan(lr_scale=scale)
    return plan


def make_transfer_optimizer(train_cfg, params, num_layers: int, plan: dict[str, GroupPlan]):
    """(optax transform, group-label tree). Frozen groups: ``set_to_zero`` (no state). Others: AdamW
    with the group's rate; a group with ``unfreeze_step`` s > 0 is wrapped in
    ``optax.transforms.conditionally_mask`` so it is exactly untouched before step s (its own schedule
    and moments start when it unfreezes) — inside one compiled step, with no recompilation."""
    labels = layer_groups(params, num_layers)
    schedule = optim.lr_schedule(train_cfg)
    transforms = {}
    for group in sorted(set(jax.tree.leaves(labels))):
        p = plan[group]
        if p.frozen:
            transforms[group] = optax.set_to_zero()
            continue
        inner = optim.adamw(train_cfg, schedule, p.lr_scale)
        if p.unfreeze_step > 0:
            start = p.unfreeze_step
            inner = optax.transforms.conditionally_mask(inner, lambda count, start=start: count >= start)
        transforms[group] = inner
    clip = optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip else optax.identity()
    return optax.chain(clip, optax.multi_transform(transforms, labels)), labels


def trainable_counts(params, labels, plan: dict[str, GroupPlan]) -> tuple[int, int]:
    """(trainable, frozen) parameter counts. Progressive groups count as trainable."""
    sizes = jax.tree.map(lambda p, g: (int(np.size(p)), plan[g].frozen), params, labels,
                         is_leaf=lambda x: isinstance(x, str))
    leaves = jax.tree.leaves(sizes, is_leaf=lambda x: isinstance(x, tuple))
    frozen = sum(n for n, f in leaves if f)
    return sum(n for n, _ in leaves) - frozen, frozen
