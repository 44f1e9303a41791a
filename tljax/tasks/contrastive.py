"""Contrastive body tuning (SetFit, Tunstall et al. 2022): pairs of labeled texts, cosine-similarity loss.

Pairs are sampled from the labeled set (same label -> target 1, different labels -> target 0) and the
encoder's pooled embeddings are trained so that their cosine similarity matches the target (mean squared
error). A logistic-regression head is then fit on the tuned embeddings (``tljax.finetune``). Needs no
validation set: one pass over a fixed number of pairs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tljax.models import SequenceClassifier

COSINE_EPS = 1e-8  # keeps the cosine finite for an all-zero embedding


def sample_pairs(labels: np.ndarray, iterations: int, seed: int) -> np.ndarray:
    """Balanced pairs of a labeled set: for each of ``iterations`` rounds, every example i (in a shuffled
    order) is paired once with a random other example of its class (target 1) and once with a random
    example of another class (target 0). labels: int [N] -> pairs int64 [2 * N * iterations, 3] of
    (left index, right index, target 0/1). An example alone in its class is paired with itself."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    others = {c: np.flatnonzero(labels != c) for c in members}
    if any(len(o) == 0 for o in others.values()):
        raise ValueError("contrastive pairs need at least two classes in the labeled set")
    out = np.empty((2 * len(labels) * iterations, 3), np.int64)
    row = 0
    for _ in range(iterations):
        for i in rng.permutation(len(labels)):
            same = members[int(labels[i])]
            candidates = same[same != i] if len(same) > 1 else same
            out[row] = (i, rng.choice(candidates), 1)
            out[row + 1] = (i, rng.choice(others[int(labels[i])]), 0)
            row += 2
    return out


def cosine_mse(left: jax.Array, right: jax.Array, target: jax.Array) -> jax.Array:
    """Mean of (cos(left_i, right_i) - target_i)^2; left / right [P, H], target [P] -> []."""
    dot = jnp.sum(left * right, -1)
    norms = jnp.linalg.norm(left, axis=-1) * jnp.linalg.norm(right, axis=-1)
    return jnp.mean((dot / jnp.maximum(norms, COSINE_EPS) - target) ** 2)


def train_loss(model: SequenceClassifier):
    """The engine's loss of a pair batch (left ids [P, T], left mask [P, T], right ids [P, T], right mask
    [P, T], target [P] float): (cosine-similarity MSE [], {"cosine_gap": []}), dropout on. Both sides go
    through the encoder in one call; cosine_gap = mean cosine of positive pairs minus that of negatives."""

    def loss_fn(params, batch, rng):
        ids_l, mask_l, ids_r, mask_r, target = batch
        emb = model.apply({"params": params}, jnp.concatenate([ids_l, ids_r]), jnp.concatenate([mask_l, mask_r]),
                          deterministic=False, rngs={"dropout": rng}, method=SequenceClassifier.features)
        left, right = emb[: ids_l.shape[0]], emb[ids_l.shape[0]:]
        loss = cosine_mse(left, right, target)
        cos = jnp.sum(left * right, -1) / jnp.maximum(
            jnp.linalg.norm(left, axis=-1) * jnp.linalg.norm(right, axis=-1), COSINE_EPS)
        pos = jnp.sum(target)
        gap = jnp.sum(cos * target) / jnp.maximum(pos, 1) - jnp.sum(cos * (1 - target)) / jnp.maximum(
            target.shape[0] - pos, 1)
        return loss, {"cosine_gap": gap}

    return loss_fn
