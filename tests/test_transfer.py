"""Transfer policy: frozen weights stay bit-identical and hold no optimizer state, progressive unfreezing
runs in one compiled step, layer-wise rates scale updates, partial restore keeps the encoder and makes
a fresh head."""
import numpy as np
import jax
import jax.numpy as jnp
import ml_collections
import pytest
import flax.linen as nn
from flax import traverse_util

from tljax import sharding as shd
from tljax import engine, policy
from tljax.finetune import merge_pretrained
from tljax.tasks import classify
from tljax.models import LanguageModel, SequenceClassifier, TransformerConfig
from tljax.pretrained import PretrainedError
from tljax.state import create_train_state

L = 4


def cfg(**kw):
    base = dict(kind="bert", vocab_size=64, hidden_size=16, num_layers=L, num_heads=2, mlp_dim=32, max_len=16,
                dropout=0.0, attention_dropout=0.0)
    base.update(kw)
    return TransformerConfig(**base)


def train_cfg(**kw):
    c = dict(steps=20, lr=1e-2, warmup_steps=0, schedule="linear", end_lr_ratio=1.0, weight_decay=0.0, b1=0.9,
             b2=0.999, eps=1e-12, grad_clip=0.0)
    c.update(kw)
    return ml_collections.ConfigDict(c)


def setup(strategy, steps, **plan_kw):
    model = SequenceClassifier(cfg(), 2)
    ids = jax.random.randint(jax.random.key(0), (8, 16), 5, 64)
    mask = jnp.ones_like(ids)
    labels = jnp.arange(8) % 2
    init = lambda r: model.init(r, ids[:1], mask[:1])["params"]
    params0 = jax.device_get(nn.meta.unbox(init(jax.random.key(1))))
    rules = policy.strategy_rules(strategy, L, **plan_kw)
    tx, groups, plan = policy.make_optimizer(train_cfg(steps=steps), params0, rules)
    mesh = shd.make_mesh(("data",), (1,), devices=jax.devices()[:1])
    state, shardings = create_train_state(init, tx, mesh, shd.DEFAULT_RULES, seed=1)
    rep = shd.replicated(mesh)
    step = jax.jit(engine.make_train_step(classify.train_loss(model), tx, lambda s: 0.0),
                   in_shardings=(shardings, rep, rep, rep),
                   out_shardings=(shardings, rep), donate_argnums=0)  # as the engine jits it
    return state, step, (ids, mask, labels), groups, plan


def changed_groups(before, after, groups):
    flat_b, flat_a = traverse_util.flatten_dict(before), traverse_util.flatten_dict(after)
    flat_g = traverse_util.flatten_dict(groups)
    out = {}
    for path, g in flat_g.items():
        out.setdefault(g, False)
        out[g] |= not np.array_equal(np.asarray(flat_b[path]), np.asarray(flat_a[path]))
    return out


def test_light_freezes_exactly_and_keeps_no_state_for_frozen_leaves():
    state, step, batch, groups, plan = setup("light", 5, unfrozen_layers=2)
    before = jax.device_get(state.params)
    for _ in range(5):
        state, _ = step(state, *batch)
    changed = changed_groups(before, jax.device_get(state.params), groups)
    assert changed == {"embeddings": False, "layer_0": False, "layer_1": False,
                       "layer_2": True, "layer_3": True, "head": True}
    trainable, frozen = policy.trainable_counts(before, groups, plan)
    moment_elems = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert moment_elems == 2 * trainable  # Adam's mu and nu, for trainable leaves only
    assert frozen == sum(np.size(v) for k, v in traverse_util.flatten_dict(before).items()
                         if k[1] in ("embeddings", "layer_0", "layer_1"))


def test_progressive_unfreezes_one_group_at_a_time_in_one_compilation():
    E = 2
    state, step, batch, groups, _ = setup("progressive", 20, unfreeze_every=E)
    order = policy.group_order(L)  # head, layer_3, …, layer_0, embeddings
    start = jax.device_get(state.params)
    for k in range(len(order) + 1):
        prev = jax.device_get(state.params)
        for _ in range(E):
            state, _ = step(state, *batch)
        ever = changed_groups(start, jax.device_get(state.params), groups)
        now = changed_groups(prev, jax.device_get(state.params), groups)
        active = set(order[: k + 1])
        assert {g for g, c in ever.items() if c} == active, f"stage {k}"
        assert {g for g, c in now.items() if c} == active
    assert step._cache_size() == 1


def test_layer_wise_decay_scales_first_adam_step():
    decay = 0.5
    state, step, batch, groups, _ = setup("full", 1, layer_lr_decay=decay)
    before = jax.device_get(state.params)
    state, _ = step(state, *batch)
    after = jax.device_get(state.params)
    # Adam's first step moves each weight by lr · scale (sign of the gradient), eps ≈ 0.
    moved = lambda g: np.median(np.abs(after["encoder"][g]["mlp"]["intermediate"]["kernel"]
                                       - before["encoder"][g]["mlp"]["intermediate"]["kernel"]))
    for i in range(L):
        np.testing.assert_allclose(moved(f"layer_{i}"), 1e-2 * decay ** (L - 1 - i), rtol=1e-3)
    emb = np.abs(after["encoder"]["embeddings"]["position_embeddings"]["embedding"][:16]
                 - before["encoder"]["embeddings"]["position_embeddings"]["embedding"][:16])
    np.testing.assert_allclose(np.median(emb), 1e-2 * decay ** L, rtol=1e-3)


def test_plan_values():
    plan = {r.group: r.plan for r in policy.strategy_rules("progressive", 3, unfreeze_every=10, layer_lr_decay=0.9)}
    assert sorted((p.start_step, g) for g, p in plan.items()) == [
        (0, "head"), (10, "layer_2"), (20, "layer_1"), (30, "layer_0"), (40, "embeddings")]
    assert plan["layer_0"].lr_scale == pytest.approx(0.81) and plan["embeddings"].lr_scale == pytest.approx(0.729)
    with pytest.raises(ValueError, match="unfrozen_layers=5"):
        policy.strategy_rules("light", 3, unfrozen_layers=5)


def test_partial_restore_keeps_encoder_and_makes_a_fresh_head():
    lm = jax.device_get(nn.meta.unbox(LanguageModel(cfg()).init(jax.random.key(2), jnp.ones((1, 16), jnp.int32))))["params"]
    clf = SequenceClassifier(cfg(), 3)
    fresh = jax.device_get(nn.meta.unbox(clf.init(jax.random.key(3), jnp.ones((1, 16), jnp.int32), jnp.ones((1, 16)))))["params"]
    merged, kept = merge_pretrained(fresh, lm)
    assert sorted(kept) == ["classifier/bias", "classifier/kernel"]
    jax.tree.map(np.testing.assert_array_equal, merged["encoder"], lm["encoder"])
    jax.tree.map(np.testing.assert_array_equal, merged["pooler"], lm["pooler"])
    np.testing.assert_array_equal(merged["classifier"]["kernel"], fresh["classifier"]["kernel"])
    assert "mlm_head" not in merged


def test_restore_into_a_different_architecture_lists_the_mismatches():
    lm = jax.device_get(nn.meta.unbox(LanguageModel(cfg(num_layers=3, mlp_dim=48)).init(
        jax.random.key(2), jnp.ones((1, 16), jnp.int32))))["params"]
    clf = SequenceClassifier(cfg(), 2)
    fresh = jax.device_get(nn.meta.unbox(clf.init(jax.random.key(3), jnp.ones((1, 16), jnp.int32), jnp.ones((1, 16)))))["params"]
    with pytest.raises(PretrainedError) as e:
        merge_pretrained(fresh, lm)
    msg = str(e.value)
    assert "encoder/layer_0/mlp/intermediate/kernel: checkpoint (16, 48) vs model (16, 32)" in msg
    assert "encoder/layer_3/attention/key/bias: model (2, 8), missing in checkpoint" in msg or "more" in msg
