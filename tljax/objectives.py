"""Pretraining objectives: BERT masked-LM (15 %, 80/10/10) and GPT next-token prediction.

MLM masking runs on device from the step's PRNG key, so a checkpoint (which stores the key) reproduces it.
Like the original BERT, each sequence gets exactly round(rate · n_eligible) predictions (capped at
P = ``max_predictions``) and the vocabulary projection runs only at those P positions.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class MlmBatch(NamedTuple):
    """The output of masking. input_ids [B, T]; positions, targets, weights [B, P]."""

    input_ids: jax.Array
    positions: jax.Array
    targets: jax.Array
    weights: jax.Array


def max_predictions(seq_len: int, rate: float) -> int:
    """Static number of prediction slots per sequence (P)."""
    return max(1, math.ceil(seq_len * rate))


def mlm_mask_from_noise(input_ids, eligible, select_noise, action_noise, random_tokens, *, mask_id: int,
                        rate: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1) -> MlmBatch:
    """Deterministic core of MLM masking, given the random draws.

    input_ids, random_tokens: int [B, T]; eligible: bool [B, T] (not special, not padding);
    select_noise, action_noise: float in [0, 1) [B, T]. The ``round(rate · n_eligible)`` eligible tokens
    with the smallest ``select_noise`` are selected; a selected token becomes ``mask_id`` when its
    ``action_noise`` < mask_prob, ``random_tokens`` when < mask_prob + random_prob, else stays.
    """
    seq_len = input_ids.shape[1]
    num_slots = max_predictions(seq_len, rate)
    score = jnp.where(eligible, select_noise, 2.0)  # ineligible tokens sort last
    order = jnp.argsort(score, axis=1, stable=True)[:, :num_slots]  # [B, P]
    num_selected = jnp.minimum(jnp.round(eligible.sum(1) * rate).astype(jnp.int32), num_slots)
    weights = (jnp.arange(num_slots)[None, :] < num_selected[:, None])
    positions = jnp.where(weights, order, 0)
    targets = jnp.take_along_axis(input_ids, positions, axis=1)

    selected = jnp.zeros(input_ids.shape, bool).at[jnp.arange(input_ids.shape[0])[:, None], positions].max(weights)
    replaced = jnp.where(action_noise < mask_prob, mask_id,
                         jnp.where(action_noise < mask_prob + random_prob, random_tokens, input_ids))
    masked_ids = jnp.where(selected, replaced, input_ids)
    return MlmBatch(masked_ids, positions.astype(jnp.int32), jnp.where(weights, targets, 0).astype(jnp.int32),
                    weights.astype(jnp.float32))


def mlm_mask(rng: jax.Array, input_ids: jax.Array, eligible: jax.Array, *, mask_id: int, vocab_size: int,
             rate: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1) -> MlmBatch:
    """Draw the noise from ``rng`` and mask. input_ids, eligible: [B, T]. Random replacements are drawn
    uniformly from the whole vocabulary, as in the original BERT."""
    k_select, k_action, k_random = jax.random.split(rng, 3)
    shape = input_ids.shape
    return mlm_mask_from_noise(
        input_ids, eligible, jax.random.uniform(k_select, shape), jax.random.uniform(k_action, shape),
        jax.random.randint(k_random, shape, 0, vocab_size, dtype=input_ids.dtype),
        mask_id=mask_id, rate=rate, mask_prob=mask_prob, random_prob=random_prob)


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array):
    """logits [..., V] float, targets int [...], weights [...] -> (loss sum, correct sum, weight sum).

    Sums, not means, so that callers can combine shards and batches exactly.
    """
    logits = logits.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    # "Correct" = the target's logit is the maximum: argmax's answer except on exact ties, without
    # argmax's index reduction over V (2-5 % of a CPU step).
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = (target_logit >= logits.max(-1)).astype(jnp.float32)
    return (losses * weights).sum(), (correct * weights).sum(), weights.sum()


def mlm_loss(logits: jax.Array, batch: MlmBatch):
    """logits [B, P, V] at ``batch.positions`` -> (loss sum, correct sum, number of predictions)."""
    return weighted_cross_entropy(logits, batch.targets, batch.weights)


def clm_targets(input_ids: jax.Array, attention_mask: jax.Array):
    """Next-token targets and weights [B, T]: position t predicts token t+1; the last position and
    any position whose target is padding get weight 0."""
    targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    next_real = jnp.concatenate([attention_mask[:, 1:], jnp.zeros_like(attention_mask[:, :1])], axis=1)
    weights = (attention_mask * next_real).astype(jnp.float32)
    return targets, weights


def clm_loss(logits: jax.Array, input_ids: jax.Array, attention_mask: jax.Array):
    """logits [B, T, V], input_ids / attention_mask [B, T] -> (loss sum, correct sum, number of targets)."""
    targets, weights = clm_targets(input_ids, attention_mask)
    return weighted_cross_entropy(logits, targets, weights)
