"""Fine-tuning's inference batches: padding cut per batch (outputs unchanged, input order kept) and the
per-text feature cache (each text encoded once, whatever subsets ask for it)."""
import jax
import numpy as np
import pytest

from tljax import finetune
from tljax.tasks import classify
from tljax.models import SequenceClassifier, TransformerConfig


def test_trimmed_length():
    mask = np.zeros((3, 64), np.int32)
    mask[0, :5], mask[1, :17], mask[2, :3] = 1, 1, 1
    assert classify.trimmed_length(mask) == 32  # 17 rounded up to a multiple of 16
    assert classify.trimmed_length(mask[[0, 2]]) == 16
    mask[1, :] = 1
    assert classify.trimmed_length(mask) == 64
    assert classify.trimmed_length(np.ones((2, 40), np.int32)) == 40  # never beyond the encoded length


def test_batched_apply_cuts_padding_without_changing_outputs():
    cfg = TransformerConfig(kind="bert", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
                            max_len=64, dropout=0.0, attention_dropout=0.0)
    model = SequenceClassifier(cfg, 3, pooling="mean")
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 64, size=37)
    ids = rng.integers(5, 64, size=(37, 64)).astype(np.int32)
    mask = (np.arange(64)[None] < lengths[:, None]).astype(np.int32)
    ids *= mask
    params = model.init(jax.random.key(0), ids[:1], mask[:1])["params"]
    fn = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
    seen_lengths = []
    recording = lambda p, i, m: seen_lengths.append(i.shape[1]) or fn(p, i, m)

    cut = classify.batched_apply(recording, params, ids, mask, batch=8)
    full = np.asarray(fn(params, ids, mask))
    np.testing.assert_allclose(cut, full, rtol=1e-5, atol=1e-6)  # same rows, same order
    assert set(seen_lengths) <= {16, 32, 48, 64} and min(seen_lengths) < 64  # short batches ran short
    assert classify.batched_apply(fn, params, ids[:0], mask[:0], batch=8) is None

    # The inference jit (XLA's own dots instead of YNNPACK fusions on CPU) computes the same logits.
    fast = classify.jit_inference(lambda p, i, m: model.apply({"params": p}, i, m))
    np.testing.assert_allclose(np.asarray(fast(params, ids, mask)), full, rtol=1e-5, atol=1e-6)
    if jax.default_backend() == "cpu":
        assert "ynn_fusion" not in fast.lower(params, ids, mask).compile().as_text()


def test_feature_cache_encodes_each_text_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TLJAX_DATA_DIR", str(tmp_path))
    encoded = []

    def encoder(texts):
        def compute(rows):
            encoded.extend(texts[r] for r in rows)
            return np.asarray([[len(texts[r]), ord(texts[r][0])] for r in rows], np.float32)
        return compute

    key = ["checkpoint-a", "mean", "64"]
    first = ["apple", "kiwi", "apple", "fig"]
    out = finetune.cached_features(key, first, encoder(first))
    np.testing.assert_array_equal(out, [[5, 97], [4, 107], [5, 97], [3, 102]])
    assert sorted(encoded) == ["apple", "fig", "kiwi"]  # the duplicate is encoded once

    encoded.clear()
    second = ["fig", "banana", "kiwi"]
    out = finetune.cached_features(key, second, encoder(second))
    np.testing.assert_array_equal(out, [[3, 102], [6, 98], [4, 107]])
    assert encoded == ["banana"]  # only the new text

    encoded.clear()
    finetune.cached_features(["checkpoint-b", "mean", "64"], second, encoder(second))
    assert sorted(encoded) == ["banana", "fig", "kiwi"]  # another encoder setting has its own store
    assert finetune.cached_features(key, [], encoder([])).shape[0] == 0
    # No texts and no store yet: the width comes from compute, as the probe needs [0, H] features.
    assert finetune.cached_features(["checkpoint-c"], [], lambda rows: np.zeros((len(rows), 2))).shape == (0, 2)


@pytest.mark.parametrize("n", [1, 8, 9])
def test_batched_apply_batch_edges(n):
    fn = lambda p, i, m: i.sum(1, keepdims=True) * 1.0
    ids = np.arange(n * 20, dtype=np.int32).reshape(n, 20) % 7 + 1
    mask = np.ones_like(ids)
    mask[:, n + 2:] = 0
    ids *= mask
    np.testing.assert_array_equal(classify.batched_apply(fn, None, ids, mask, batch=4), ids.sum(1, keepdims=True))
