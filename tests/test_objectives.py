"""MLM masking and the two losses against independent numpy implementations."""
import numpy as np
import jax
import jax.numpy as jnp

from tljax import objectives


def numpy_mlm_mask(ids, eligible, select_noise, action_noise, random_tokens, mask_id, rate, pm, pr):
    """Per-row reference: pick the round(rate * n) eligible tokens with the smallest noise."""
    ids = ids.copy()
    out_ids = ids.copy()
    slots = objectives.max_predictions(ids.shape[1], rate)
    positions = np.zeros((ids.shape[0], slots), int)
    targets = np.zeros_like(positions)
    weights = np.zeros(positions.shape, np.float32)
    for b in range(ids.shape[0]):
        cand = [t for t in np.argsort(select_noise[b], kind="stable") if eligible[b, t]]
        k = min(int(np.round(eligible[b].sum() * rate)), slots)
        for j, t in enumerate(cand[:k]):
            positions[b, j], targets[b, j], weights[b, j] = t, ids[b, t], 1.0
            if action_noise[b, t] < pm:
                out_ids[b, t] = mask_id
            elif action_noise[b, t] < pm + pr:
                out_ids[b, t] = random_tokens[b, t]
    return out_ids, positions, targets, weights


def test_mlm_mask_matches_numpy_reference():
    rng = np.random.default_rng(0)
    B, T, V = 6, 40, 50
    ids = rng.integers(5, V, (B, T))
    eligible = rng.random((B, T)) > 0.2
    eligible[0] = False  # a row with nothing to predict
    sel, act = rng.random((B, T)), rng.random((B, T))
    rnd = rng.integers(0, V, (B, T))
    got = objectives.mlm_mask_from_noise(jnp.asarray(ids), jnp.asarray(eligible), jnp.asarray(sel),
                                         jnp.asarray(act), jnp.asarray(rnd), mask_id=4)
    want = numpy_mlm_mask(ids, eligible, sel, act, rnd, 4, 0.15, 0.8, 0.1)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w)
    assert np.asarray(got.weights)[0].sum() == 0


def test_mlm_mask_rates_and_exclusions():
    B, T, V, mask_id = 256, 128, 1000, 4
    ids = jax.random.randint(jax.random.key(1), (B, T), 5, V)
    ids = ids.at[:, 0].set(2).at[:, -1].set(3)  # [CLS] … [SEP]
    eligible = ids >= 5
    out = objectives.mlm_mask(jax.random.key(2), ids, eligible, mask_id=mask_id, vocab_size=V)
    w = np.asarray(out.weights).astype(bool)
    pos = np.asarray(out.positions)
    np.testing.assert_allclose(w.sum() / np.asarray(eligible).sum(), 0.15, atol=0.005)
    sel_ids = np.take_along_axis(np.asarray(ids), pos, 1)[w]
    assert (sel_ids >= 5).all(), "special tokens must never be selected"
    new = np.take_along_axis(np.asarray(out.input_ids), pos, 1)[w]
    frac_mask = (new == mask_id).mean()
    frac_same = (new == sel_ids).mean()
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - 0.1) < 0.015  # random ≈ 10 % (+ 1/V same)
    unselected = np.ones((B, T), bool)
    np.put_along_axis(unselected, pos, ~w, 1)  # keep only positions not selected
    for b in range(4):
        sel_mask = np.zeros(T, bool)
        sel_mask[pos[b][w[b]]] = True
        np.testing.assert_array_equal(np.asarray(out.input_ids)[b][~sel_mask], np.asarray(ids)[b][~sel_mask])
    # Same key -> same masking: reproducible from a checkpointed key.
    again = objectives.mlm_mask(jax.random.key(2), ids, eligible, mask_id=mask_id, vocab_size=V)
    np.testing.assert_array_equal(np.asarray(again.input_ids), np.asarray(out.input_ids))


def numpy_ce(logits, targets):
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logz = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    return logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_mlm_loss_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (3, 7))
    weights = (rng.random((3, 7)) > 0.4).astype(np.float32)
    batch = objectives.MlmBatch(None, None, jnp.asarray(targets), jnp.asarray(weights))
    loss, correct, count = objectives.mlm_loss(jnp.asarray(logits), batch)
    ce = numpy_ce(logits, targets)
    np.testing.assert_allclose(float(loss) / float(count), (ce * weights).sum() / weights.sum(), rtol=1e-5)
    assert float(correct) == ((logits.argmax(-1) == targets) * weights).sum()


def test_accuracy_equals_argmax_except_ties():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(64, 20, 300)).astype(np.float32)
    targets = rng.integers(0, 300, (64, 20))
    targets[:, :10] = logits[:, :10].argmax(-1)  # half of them right
    weights = np.ones((64, 20), np.float32)
    _, correct, _ = objectives.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    want = (logits.argmax(-1) == targets).sum()
    assert float(correct) == want and want >= 64 * 10
    # A tie for the maximum counts as correct for every tied target (argmax would pick the first).
    tied = np.zeros((1, 1, 4), np.float32)
    _, correct, _ = objectives.weighted_cross_entropy(jnp.asarray(tied), jnp.asarray([[3]]), jnp.ones((1, 1)))
    assert float(correct) == 1.0


def test_clm_loss_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(4)
    B, T, V = 2, 6, 9
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    ids = rng.integers(0, V, (B, T))
    mask = np.ones((B, T), int)
    mask[1, 4:] = 0  # padding at the end of row 1
    loss, _, count = objectives.clm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    terms = [numpy_ce(logits[b, t], np.asarray(ids[b, t + 1]))
             for b in range(B) for t in range(T - 1) if mask[b, t] and mask[b, t + 1]]
    assert float(count) == len(terms) == 5 + 3
    np.testing.assert_allclose(float(loss) / float(count), np.mean(terms), rtol=1e-5)
