"""Sequence-classification task: cross-entropy of a ``SequenceClassifier`` on (ids, mask, labels), and
batched inference over whole splits, cut to each batch's longest text."""
from __future__ import annotations

import os

import jax
import numpy as np
import optax
from sklearn.metrics import f1_score

from tljax.defaults import CPU_INFERENCE_COMPILER_OPTIONS
from tljax.models import SequenceClassifier

PAD_MULTIPLE = 16  # batches are cut to their longest row rounded up to this: few compiled shapes, little padding


def train_loss(model: SequenceClassifier, prepare=None):
    """The engine's loss of a batch (ids [B, T], mask [B, T], labels [B]): (mean cross-entropy [],
    {"accuracy": []}), dropout on. prepare(params, rng) -> the model's params (e.g. ``tljax.lora.merge``
    of adapters into kernels); None: the params as they are."""

    def loss_fn(params, batch, rng):
        ids, mask, labels = batch
        if prepare is not None:
            params = prepare(params, jax.random.fold_in(rng, 1))
        logits = model.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, {"accuracy": (logits.argmax(-1) == labels).mean()}

    return loss_fn


def encode_texts(tokenizer, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (input_ids, attention_mask), both int32 [N, max_len] (truncated, right-padded)."""
    enc = tokenizer(list(texts), max_length=max_len, truncation=True, padding="max_length")
    return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Macro-averaged F1 of label ids [N] against predictions [N] over all ``num_classes`` classes."""
    return float(f1_score(labels, predictions, labels=list(range(num_classes)), average="macro", zero_division=0))


def jit_inference(fn, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``defaults.CPU_INFERENCE_COMPILER_OPTIONS`` on the CPU
    backend (unless XLA_FLAGS sets the same option): the jit of every batched inference function."""
    options = None
    if jax.default_backend() == "cpu":
        flags = os.environ.get("XLA_FLAGS", "")
        options = {k: v for k, v in CPU_INFERENCE_COMPILER_OPTIONS.items() if k not in flags} or None
    return jax.jit(fn, compiler_options=options, **jit_kwargs)


def trimmed_length(mask: np.ndarray) -> int:
    """Columns worth keeping of a right-padded batch ``mask`` [b, T]: its longest row rounded up to a
    multiple of PAD_MULTIPLE, at most T. Cutting padding changes no output (padding is masked)."""
    longest = int(mask.sum(1).max()) if mask.size else 1
    return min(mask.shape[1], max(PAD_MULTIPLE, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE))


def batched_apply(fn, params, ids: np.ndarray, mask: np.ndarray, batch: int, device_batch=lambda a: a):
    """``fn(params, ids [b, t], mask [b, t]) -> [b, ...]`` over all N rows [N, T] in batches of ``batch``.

    Rows are grouped by length (longest first) and each batch is cut to ``trimmed_length``: short texts
    cost short sequences. The last batch is padded with empty rows, so at most T / PAD_MULTIPLE compiled
    shapes serve every call. Returns [N, ...] on the host in the input order, or None if N = 0."""
    if not len(ids):
        return None
    order = np.argsort(-mask.sum(1), kind="stable")
    out = None
    for lo in range(0, len(ids), batch):
        rows = order[lo: lo + batch]
        i, m = ids[rows], mask[rows]
        cols = trimmed_length(m)
        i, m = i[:, :cols], m[:, :cols]
        n = len(rows)
        if n < batch:
            i, m = np.pad(i, ((0, batch - n), (0, 0))), np.pad(m, ((0, batch - n), (0, 0)))
        result = np.asarray(jax.device_get(fn(params, device_batch(i), device_batch(m))))[:n]
        if out is None:
            out = np.empty((len(ids), *result.shape[1:]), result.dtype)
        out[rows] = result
    return out


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy (nats) of host logits [N, C] against labels [N] (NaN for N = 0)."""
    if not len(labels):
        return float("nan")
    top = logits.max(-1)
    logz = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
    return float((logz - logits[np.arange(len(labels)), labels]).mean())


def predict(logits_fn, params, ids: np.ndarray, mask: np.ndarray, labels: np.ndarray, batch: int,
            device_batch) -> tuple[np.ndarray, float]:
    """(predicted class ids [N], mean cross-entropy) over a whole split; ``logits_fn(params, ids, mask)``
    -> [b, C] is the jitted classifier."""
    logits = batched_apply(logits_fn, params, ids, mask, batch, device_batch)
    if logits is None:
        return np.zeros((0,), np.int64), float("nan")
    return logits.argmax(-1), cross_entropy(logits, labels)
