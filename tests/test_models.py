"""Model invariants: shapes, logical axis names, per-layer paths, padding masking, causality, and the
attention against a numpy reference."""
import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import pytest
from flax import traverse_util

from tljax.models import LanguageModel, TransformerConfig
from tljax.models.layers import SelfAttention


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
