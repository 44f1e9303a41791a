"""The parameter policy and the optimizer built from it: one mechanism for every per-parameter decision.

Rules are regular expressions over parameter paths (``encoder/layer_3/attention/query/kernel``); the first
rule whose regex matches a leaf (``re.search``) gives it a group and the group's treatment:

- frozen: no update and no optimizer state (``optax.set_to_zero``),
- trainable from step s (gradual unfreezing, inside one compiled step),
- a learning-rate multiplier (layer-wise / discriminative rates),
- a weight-decay multiplier (biases and LayerNorm parameters never decay).

Leaves no rule matches form the group ``default`` (trainable, multipliers 1). The named transfer
strategies (``light``, ``full``, ``progressive``, ``lora``, layer-wise decay) are presets that produce such rules;
a config adds its own as strings (``param_rules``), which take precedence over the preset::

    "encoder/embeddings/.*: frozen"
    "encoder/layer_[0-3]/.*: lr=0.1"
    "classifier/.*: lr=10, wd=0"
    "encoder/layer_5/.*: from=100"
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax
import numpy as np
import optax
from flax import traverse_util

NO_DECAY_PATTERN = r"(^|/)(bias|scale|mlm_bias)$"  # biases and LayerNorm parameters
STRATEGIES = ("features", "light", "full", "progressive", "lora")
DEFAULT_GROUP = "default"


class PolicyError(ValueError):
    """A parameter rule that cannot apply; the message names the rule and the fix."""


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """frozen: never updated, no optimizer state. start_step: first step at which the group is updated
    (its own schedule and moments start then). lr_scale / wd_scale: multipliers of the base learning rate
    and weight decay."""

    frozen: bool = False
    start_step: int = 0
    lr_scale: float = 1.0
    wd_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Rule:
    """Leaves whose path matches ``pattern`` belong to group ``group``, treated per ``plan``."""

    pattern: str
    group: str
    plan: GroupPlan


_FIELDS = {"lr": "lr_scale", "wd": "wd_scale", "from": "start_step"}


def parse_rule(text: str, group: str) -> Rule:
    """``"REGEX: frozen"`` or ``"REGEX: lr=X, wd=Y, from=S"`` (any subset) -> Rule named ``group``."""
    pattern, sep, spec = str(text).rpartition(":")
    pattern, spec = pattern.strip(), spec.strip()
    usage = "write 'REGEX: frozen' or 'REGEX: lr=0.1, wd=1.0, from=0'"
    if not sep or not pattern:
        raise PolicyError(f"parameter rule {text!r} has no 'REGEX:' part; {usage}")
    try:
        re.compile(pattern)
    except re.error as e:
        raise PolicyError(f"parameter rule {text!r}: bad regular expression ({e}); {usage}") from None
    if spec == "frozen":
        return Rule(pattern, group, GroupPlan(frozen=True))
    values = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in _FIELDS:
            raise PolicyError(f"parameter rule {text!r}: {item!r} is not one of lr=, wd=, from=; {usage}")
        try:
            number = float(value)
        except ValueError:
            raise PolicyError(f"parameter rule {text!r}: {value!r} is not a number") from None
        field = _FIELDS[key.strip()]
        if field == "start_step":
            if number < 0 or number != int(number):
                raise PolicyError(f"parameter rule {text!r}: from= needs a step >= 0")
            number = int(number)
        elif number < 0:
            raise PolicyError(f"parameter rule {text!r}: {key.strip()}= must be >= 0 (use 'frozen' to freeze)")
        values[field] = number
    if not values:
        raise PolicyError(f"parameter rule {text!r} says nothing; {usage}")
    return Rule(pattern, group, GroupPlan(**values))


def parse_rules(texts: Sequence[str]) -> list[Rule]:
    """The config's ``param_rules`` strings as Rules named ``rule_0``, ``rule_1``, …"""
    return [parse_rule(t, f"rule_{i}") for i, t in enumerate(texts or ())]


# ----------------------------------------------------------------------------------------------------
# Strategy presets
# ----------------------------------------------------------------------------------------------------
def layer_patterns(num_layers: int) -> list[tuple[str, str]]:
    """(regex, group) for the backbone's groups, bottom up: ``embeddings``, ``layer_0`` … ``layer_{L-1}``.
    Anything else (pooler, classifier, GPT's final LayerNorm, MLM head) is the top, the ``head``."""
    backbone = r"^(encoder|decoder)/"
    return [(backbone + r"embeddings/", "embeddings")] + [
        (backbone + rf"layer_{i}/", f"layer_{i}") for i in range(num_layers)]


def group_order(num_layers: int) -> list[str]:
    """Groups from the top of the network down: head, layer_{L-1}, …, layer_0, embeddings."""
    return ["head"] + [f"layer_{i}" for i in reversed(range(num_layers))] + ["embeddings"]


def strategy_rules(strategy: str, num_layers: int, *, unfrozen_layers: int = 2, layer_lr_decay: float = 1.0,
                   unfreeze_every: int = 50) -> list[Rule]:
    """The preset of a named strategy, one rule per layer group plus a catch-all ``head`` rule.

    light: embeddings and layers below the top ``unfrozen_layers`` frozen. full: all trainable.
    progressive: the head trains from step 0 and one more group from the top every ``unfreeze_every``
    steps (ULMFiT gradual unfreezing). layer_lr_decay d (ELECTRA-style): the head and the top layer get the
    base rate, each layer below d times the one above, the embeddings d^L.
    lora: the adapters (``lora/``) and the classifier head train; everything else is frozen (``lora_rules``).
    """
    if strategy == "lora":
        return lora_rules()
    if strategy not in STRATEGIES or strategy == "features":
        raise PolicyError(f"strategy={strategy!r} has no layer plan; use one of light, full, progressive, lora")
    if not 0.0 < layer_lr_decay <= 1.0:
        raise PolicyError(f"layer_lr_decay={layer_lr_decay} must be in (0, 1]")
    if strategy == "light" and not 0 <= unfrozen_layers <= num_layers:
        raise PolicyError(f"unfrozen_layers={unfrozen_layers} must be between 0 and the model's {num_layers} layers")
    if strategy == "progressive" and unfreeze_every < 1:
        raise PolicyError(f"unfreeze_every={unfreeze_every} must be >= 1")
    patterns = dict((group, rx) for rx, group in layer_patterns(num_layers))
    patterns["head"] = ".*"
    rules = []
    for depth, group in enumerate(group_order(num_layers)):
        # depth 0 = head, 1 = top layer, …, L = layer_0, L + 1 = embeddings
        scale = layer_lr_decay ** max(depth - 1, 0)
        if strategy == "light":
            plan = GroupPlan(frozen=depth > unfrozen_layers, lr_scale=scale)
        elif strategy == "progressive":
            plan = GroupPlan(start_step=depth * unfreeze_every, lr_scale=scale)
        else:
            plan = GroupPlan(lr_scale=scale)
        rules.append(Rule(patterns[group], group, plan))
    return rules[1:] + rules[:1]  # the catch-all head rule last: first match wins


def lora_rules() -> list[Rule]:
    """The ``lora`` preset: the adapters' subtree (``tljax.lora``) and the classifier head (with pooling=cls
    the pooler in front of it too: it may start fresh) are trainable; every other leaf (the whole pretrained
    backbone) is frozen: no update, no optimizer state."""
    return [Rule(r"^lora/", "adapters", GroupPlan()), Rule(r"^(classifier|pooler)/", "head", GroupPlan()),
            Rule(".*", "base", GroupPlan(frozen=True))]


def frozen_mask(labels, plans: dict[str, GroupPlan]):
    """Tree of bools like ``labels``: True for leaves of a frozen group (their gradient is never used)."""
    return jax.tree.map(lambda g: plans[g].frozen, labels)


# ----------------------------------------------------------------------------------------------------
# Labels and the optimizer
# ----------------------------------------------------------------------------------------------------
def path_str(path: tuple[str, ...]) -> str:
    return "/".join(str(p) for p in path)


def label_params(params, patterns: Sequence[tuple[str, str]], default: str):
    """Tree of labels with the structure of ``params``: the label of the first ``(regex, label)`` whose
    regex matches the leaf's path, else ``default``."""
    compiled = [(re.compile(rx), label) for rx, label in patterns]
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({
        path: next((label for rx, label in compiled if rx.search(path_str(path))), default) for path in flat})


def group_labels(params, rules: Sequence[Rule]):
    """(tree of group names like ``params``, {group: GroupPlan}) for the groups that hold a leaf."""
    labels = label_params(params, [(r.pattern, r.group) for r in rules], DEFAULT_GROUP)
    plans = {DEFAULT_GROUP: GroupPlan()}
    for rule in rules:  # the first rule of a name defines it (names are unique in practice)
        plans.setdefault(rule.group, rule.plan)
    used = set(jax.tree.leaves(labels))
    return labels, {g: p for g, p in plans.items() if g in used}


def decay_mask(params):
    """True where weight decay applies: matrices and embeddings, not biases or LayerNorm parameters."""
    labels = label_params(params, [(NO_DECAY_PATTERN, "no_decay")], "decay")
    return jax.tree.map(lambda label: label == "decay", labels)


def lr_schedule(train_cfg) -> optax.Schedule:
    """Linear warmup to ``train.lr`` over ``train.warmup_steps``, then cosine (or linear) decay to
    ``train.lr * train.end_lr_ratio`` at ``train.steps``."""
    steps, warmup = int(train_cfg.steps), int(train_cfg.warmup_steps)
    if train_cfg.schedule not in ("cosine", "linear"):
        raise PolicyError(f"train.schedule={train_cfg.schedule!r} unknown; use 'cosine' or 'linear'")
    end = train_cfg.lr * train_cfg.end_lr_ratio
    decay_steps = max(steps - warmup, 1)
    if train_cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(train_cfg.lr, decay_steps, alpha=train_cfg.end_lr_ratio)
    else:
        after = optax.linear_schedule(train_cfg.lr, end, decay_steps)
    return optax.join_schedules([optax.linear_schedule(0.0, train_cfg.lr, max(warmup, 1)), after], [warmup])


def adamw(train_cfg, schedule: optax.Schedule, lr_scale: float = 1.0, wd_scale: float = 1.0):
    """AdamW with the decay mask; ``lr_scale`` multiplies the schedule, ``wd_scale`` the weight decay."""
    scaled = schedule if lr_scale == 1.0 else (lambda step: schedule(step) * lr_scale)
    return optax.adamw(scaled, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                       weight_decay=train_cfg.weight_decay * wd_scale, mask=decay_mask)


def make_optimizer(train_cfg, params, rules: Sequence[Rule] = ()):
    """(optax transform, group-label tree, {group: GroupPlan}) for ``params`` (arrays or
    ShapeDtypeStructs) under ``rules``: global-norm clipping, then per group ``set_to_zero`` (frozen, no
    state) or AdamW with the group's multipliers; a group with ``start_step`` s > 0 is wrapped in
    ``optax.transforms.conditionally_mask`` so it is exactly untouched before step s, with no
    recompilation."""
    labels, plans = group_labels(params, rules)
    schedule = lr_schedule(train_cfg)
    clip = optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip else optax.identity()
    if len(plans) == 1 and next(iter(plans.values())) == GroupPlan():
        # One plain group (pretraining without rules): plain AdamW, the optimizer state's layout of
        # checkpoints written before the policy existed.
        return optax.chain(clip, adamw(train_cfg, schedule)), labels, plans
    transforms = {}
    for group, plan in plans.items():
        if plan.frozen:
            transforms[group] = optax.set_to_zero()
            continue
        inner = adamw(train_cfg, schedule, plan.lr_scale, plan.wd_scale)
        if plan.start_step > 0:
            inner = optax.transforms.conditionally_mask(inner, lambda count, s=plan.start_step: count >= s)
        transforms[group] = inner
    return optax.chain(clip, optax.multi_transform(transforms, labels)), labels, plans


def trainable_counts(params, labels, plans: dict[str, GroupPlan]) -> tuple[int, int]:
    """(trainable, frozen) parameter counts; groups that unfreeze later count as trainable."""
    sizes = jax.tree.map(lambda p, g: (int(np.size(p)), plans[g].frozen), params, labels,
                         is_leaf=lambda x: isinstance(x, str))
    leaves = jax.tree.leaves(sizes, is_leaf=lambda x: isinstance(x, tuple))
    frozen = sum(n for n, f in leaves if f)
    return sum(n for n, _ in leaves) - frozen, frozen


def describe(params, labels, plans: dict[str, GroupPlan]) -> list[str]:
    """One line per group: its parameter count and treatment (for the run log)."""
    counts: dict[str, int] = {}
    for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
        counts[g] = counts.get(g, 0) + int(np.size(p))
    lines = []
    for g, plan in plans.items():
        what = "frozen" if plan.frozen else (f"lr x{plan.lr_scale:g}, wd x{plan.wd_scale:g}"
                                            + (f", from step {plan.start_step}" if plan.start_step else ""))
        lines.append(f"  {g}: {counts.get(g, 0):,} parameters, {what}")
    return lines
