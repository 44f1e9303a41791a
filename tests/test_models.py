"""Model invariants: shapes, logical axis names, per-layer paths, padding masking, causality, and the
attention against a numpy reference."""
import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import pytest
from flax import traverse_util

from tljax.models import LanguageModel, TransformerConfig
from tljax.models.layers import Dropout, SelfAttention, dropout, gelu_exact


def tiny(kind, **kw):
    base = dict(kind=kind, vocab_size=64, hidden_size=24, num_layers=3, num_heads=3, mlp_dim=40, max_len=16,
                dropout=0.0, attention_dropout=0.0)
    base.update(kw)
    return TransformerConfig(**base)


def init(cfg, T=16):
    boxed = LanguageModel(cfg).init(jax.random.key(0), jnp.ones((2, T), jnp.int32))
    return boxed, nn.meta.unbox(boxed)


@pytest.mark.parametrize("kind", ["bert", "gpt"])
def test_every_parameter_has_logical_axes_and_layer_paths(kind):
    boxed, params = init(tiny(kind))
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed)["params"])
    flat = traverse_util.flatten_dict(params["params"])
    assert specs.keys() == flat.keys()
    for path, spec in specs.items():
        assert len(spec) == flat[path].ndim and all(isinstance(n, str) for n in spec), path
    root = "encoder" if kind == "bert" else "decoder"
    layers = {p[1] for p in flat if p[0] == root and p[1].startswith("layer_")}
    assert layers == {"layer_0", "layer_1", "layer_2"}
    word = flat[(root, "embeddings", "word_embeddings", "embedding")]
    assert word.shape == (64, 24) and tuple(specs[(root, "embeddings", "word_embeddings", "embedding")]) == ("vocab", "embed")


def test_bert_padding_is_masked():
    cfg = tiny("bert")
    _, params = init(cfg)
    model = LanguageModel(cfg)
    ids = jax.random.randint(jax.random.key(1), (2, 16), 5, 64)
    mask = jnp.ones((2, 16), jnp.int32).at[:, 10:].set(0)
    other = ids.at[:, 10:].set(7)  # different content in the padded positions only
    h1 = model.apply(params, ids, mask, method=LanguageModel.encode)
    h2 = model.apply(params, other, mask, method=LanguageModel.encode)
    np.testing.assert_allclose(np.asarray(h1[:, :10]), np.asarray(h2[:, :10]), atol=1e-6)
    assert not np.allclose(np.asarray(h1[:, 10:]), np.asarray(h2[:, 10:]))


def test_gpt_is_causal():
    cfg = tiny("gpt")
    _, params = init(cfg)
    model = LanguageModel(cfg)
    ids = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    l1 = model.apply(params, ids)
    l2 = model.apply(params, ids.at[:, 9:].set(3))
    np.testing.assert_allclose(np.asarray(l1[:, :9]), np.asarray(l2[:, :9]), atol=1e-6)
    assert not np.allclose(np.asarray(l1[:, 9:]), np.asarray(l2[:, 9:]))


def test_logits_at_positions_equal_gathered_full_logits():
    cfg = tiny("bert")
    _, params = init(cfg)
    model = LanguageModel(cfg)
    ids = jax.random.randint(jax.random.key(2), (2, 16), 5, 64)
    positions = jnp.array([[1, 5, 9], [0, 2, 15]])
    full = model.apply(params, ids)
    picked = model.apply(params, ids, positions=positions)
    np.testing.assert_allclose(np.asarray(picked), np.take_along_axis(np.asarray(full), np.asarray(positions)[..., None], 1),
                               atol=1e-5)
    assert full.shape == (2, 16, 64) and picked.shape == (2, 3, 64)


def test_attention_matches_numpy_reference():
    cfg = tiny("bert")
    att = SelfAttention(cfg)
    x = jax.random.normal(jax.random.key(3), (2, 5, 24))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])[:, None, None, :].astype(bool)
    params = nn.meta.unbox(att.init(jax.random.key(4), x, mask, True))
    got = np.asarray(att.apply(params, x, mask, True))
    p = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in params["params"].items()}
    xs = np.asarray(x, np.float64)
    q, k, v = (np.einsum("bth,hnd->btnd", xs, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
    s = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(8)
    s = np.where(np.asarray(mask), s, -1e30)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnd->btnd", a, v)
    want = np.einsum("btnd,ndh->bth", o, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_dropout_path_matches_fused_path_when_rate_is_tiny():
    cfg = tiny("gpt", attention_dropout=1e-9)
    att = SelfAttention(cfg, causal=True)
    x = jax.random.normal(jax.random.key(5), (2, 6, 24))
    params = nn.meta.unbox(att.init(jax.random.key(6), x, None, True))
    fused = att.apply(params, x, None, True)
    explicit = att.apply(params, x, None, False, rngs={"dropout": jax.random.key(7)})
    np.testing.assert_allclose(np.asarray(fused), np.asarray(explicit), atol=1e-5)


def test_remat_gives_same_gradients():
    ids = jax.random.randint(jax.random.key(8), (2, 16), 0, 64)
    grads = []
    for remat in ("none", "full", "dots"):
        cfg = tiny("gpt", remat=remat)
        _, params = init(cfg)
        loss = lambda p: LanguageModel(cfg).apply(p, ids).mean()
        grads.append(jax.grad(loss)(params))
    for g in grads[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), grads[0], g)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keep_rate_and_scale(rate):
    x = jnp.ones((3, 1001, 171))  # odd width: the last word of each row serves one element
    y = np.asarray(dropout(x, rate, jax.random.key(0)))
    kept = y != 0
    n, keep = kept.size, 1 - rate
    sigma = (keep * rate / n) ** 0.5
    assert abs(kept.mean() - keep) < 5 * sigma
    assert abs(y.mean() - 1.0) < 5 * sigma / keep  # inverted dropout: expectation unchanged
    np.testing.assert_allclose(np.unique(y[kept]), 65536 / round(keep * 65536), rtol=1e-6)
    # The two 16-bit halves of a word (elements j and j + 86 of a row) are kept independently.
    both = kept[..., :85] & kept[..., 86:]
    assert abs(both.mean() - keep ** 2) < 5 * (keep ** 2 * (1 - keep ** 2) / both.size) ** 0.5
    other = np.asarray(dropout(x, rate, jax.random.key(1))) != 0
    assert (other != kept).mean() > 0.5 * 2 * keep * rate  # a new key draws a new mask


def test_dropout_deterministic_and_extreme_rates():
    x = jax.random.normal(jax.random.key(2), (4, 8))
    module = Dropout(0.3)
    np.testing.assert_array_equal(module.apply({}, x, True), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, False), x)
    np.testing.assert_array_equal(dropout(x, 1.0, jax.random.key(3)), jnp.zeros_like(x))
    # A whole model in deterministic mode ignores its dropout rates.
    ids = jax.random.randint(jax.random.key(4), (2, 16), 0, 64)
    _, params = init(tiny("bert"))
    want = LanguageModel(tiny("bert")).apply(params, ids)
    got = LanguageModel(tiny("bert", dropout=0.3, attention_dropout=0.3)).apply(params, ids, deterministic=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_gelu_is_exact_gelu():
    x = jnp.linspace(-10, 10, 200_001)
    np.testing.assert_allclose(np.asarray(gelu_exact(x)), np.asarray(jax.nn.gelu(x, approximate=False)),
                               atol=1e-6, rtol=0)
