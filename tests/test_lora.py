"""LoRA (tljax.lora, strategy=lora): B = 0 is the base model, merging matches numpy, the frozen base is
bit-identical after training and holds no optimizer state, only adapters and the head change, and a tiny
fine-tuning run with adapters learns a keyword task on a BERT and on a Llama."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from conftest import tiny_pretrain_config, write_keyword_task
from tljax import engine, finetune, lora, policy, pretrain
from tljax import sharding as shd
from tljax.config import ConfigError
from tljax.defaults import finetune_config
from tljax.models import SequenceClassifier, TransformerConfig
from tljax.state import create_train_state
from tljax.tasks import classify

MODELS = {
    "bert": dict(kind="bert", vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, max_len=16),
    "llama": dict(kind="llama", vocab_size=64, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                  mlp_dim=24, max_len=16, activation="silu", layer_norm_eps=1e-5, use_pooler=False),
}
ALL = lora.DEFAULT_TARGETS + lora.MLP_TARGETS + (r"attention/(key|out)/kernel$",)


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


def classifier(kind, scan=False):
    cfg = TransformerConfig(**MODELS[kind], dropout=0.0, attention_dropout=0.0, scan_layers=scan)
    model = SequenceClassifier(cfg, 2, pooling="mean" if kind == "bert" else "last", head_dropout=0.0)
    ids = jax.random.randint(jax.random.key(0), (8, 16), 5, 64)
    mask = jnp.ones_like(ids).at[:4, 10:].set(0)
    init = lambda r: model.init(r, ids[:1], mask[:1])["params"]
    return model, init, (ids, mask, jnp.arange(8) % 2)


@pytest.mark.parametrize("kind,scan", [("bert", False), ("llama", False), ("llama", True)])
def test_zero_b_is_the_base_model_and_merge_matches_numpy(kind, scan):
    model, init, (ids, mask, _) = classifier(kind, scan)
    boxed = init(jax.random.key(1))
    params = nn.meta.unbox(boxed)
    splits = lora.plan(boxed, ALL)
    # every attention and MLP kernel of the backbone, nothing of the head
    per_layer = 4 + (3 if kind == "llama" else 2)
    assert len(splits) == per_layer * (1 if scan else 2) and all(p[0] in ("encoder", "decoder") for p in splits)
    adapters = lora.init(splits, 3, jax.random.key(2))
    with_zero_b = {**params, lora.KEY: adapters}
    base_logits = model.apply({"params": params}, ids, mask)
    np.testing.assert_array_equal(np.asarray(model.apply({"params": lora.merge(with_zero_b, 2.0)}, ids, mask)),
                                  np.asarray(base_logits))

    # random B: the merged kernel against numpy, with the in/out split written out by hand per kernel name
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(adapters)
    flat = {p: (rng.normal(size=v.shape).astype(np.float32) if p[-1] == "b" else np.asarray(v)) for p, v in flat.items()}
    merged = traverse_util.flatten_dict(lora.merge({**params, lora.KEY: traverse_util.unflatten_dict(flat)}, 0.5))
    base = traverse_util.flatten_dict(params)
    for path in splits:
        w = np.asarray(base[path])
        a, b = flat[path + ("a",)], flat[path + ("b",)]
        lead = 1 if scan else 0  # scanned: one adapter per layer along axis 0
        n_in = 2 if path[-2] == "out" else 1  # out: [heads, kv, embed]; the others: [in, ...out]
        rows = int(np.prod(w.shape[lead:lead + n_in]))
        expected = w + 0.5 * np.einsum("...ir,...ro->...io", a, b).reshape(w.shape)
        assert a.shape[-2] == rows and b.shape[-1] == int(np.prod(w.shape[lead + n_in:]))
        np.testing.assert_allclose(np.asarray(merged[path]), expected, rtol=1e-5, atol=1e-6)
    for path, value in merged.items():  # everything not adapted is the same array
        if path not in splits:
            np.testing.assert_array_equal(np.asarray(value), np.asarray(base[path]))


def test_frozen_base_is_bit_identical_and_has_no_optimizer_state():
    model, init, batch = classifier("llama")
    boxed = init(jax.random.key(1))
    splits = lora.plan(boxed, lora.DEFAULT_TARGETS + lora.MLP_TARGETS)
    full_init = lambda r: {**init(r), lora.KEY: lora.init(splits, 4, r)}
    params0 = jax.device_get(nn.meta.unbox(full_init(jax.random.key(1))))
    train = ml_collections.ConfigDict(dict(steps=10, lr=1e-2, warmup_steps=0, schedule="linear", end_lr_ratio=1.0,
                                           weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0))
    tx, labels, plans = policy.make_optimizer(train, params0, policy.strategy_rules("lora", 2))
    assert set(plans) == {"adapters", "head", "base"} and plans["base"].frozen
    mesh = shd.make_mesh(("data",), (1,), devices=jax.devices()[:1])
    state, shardings = create_train_state(full_init, tx, mesh, shd.DEFAULT_RULES, seed=1)
    before = jax.device_get(state.params)
    rep = shd.replicated(mesh)
    frozen = policy.frozen_mask(labels, plans)
    loss = classify.train_loss(model, lambda p, r: lora.merge(p, 2.0, r, 0.1))
    step = jax.jit(engine.make_train_step(loss, tx, lambda s: 0.0, frozen), in_shardings=(shardings, rep, rep, rep),
                   out_shardings=(shardings, rep), donate_argnums=0)
    for _ in range(5):
        state, metrics = step(state, *batch)
    after = jax.device_get(state.params)
    flat_b, flat_a = traverse_util.flatten_dict(before), traverse_util.flatten_dict(after)
    flat_l = traverse_util.flatten_dict(labels)
    for path, group in flat_l.items():
        same = np.array_equal(flat_b[path], flat_a[path])
        # the base bit-identical; every adapter (A too, once B is non-zero) and the head moved
        assert same == (group == "base"), path
    # optimizer state: Adam moments for the adapters and the head only
    opt_leaves = sum(int(np.size(x)) for x in jax.tree.leaves(state.opt_state))
    trainable = sum(int(np.size(flat_b[p])) for p, g in flat_l.items() if g != "base")
    assert 2 * trainable <= opt_leaves <= 2 * trainable + 16  # + step counters
    assert np.isfinite(float(metrics["grad_norm"]))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_keyword_task(tmp_path_factory.mktemp("task"), (("train", 200), ("test", 60)))


def _pretrain(kind, corpus, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"pre_{kind}")
    if kind == "bert":
        c = tiny_pretrain_config("mlm", "bert", corpus, steps=12)
    else:  # the fields of configs/llama_clm_tiny.py, at the tiny test size
        c = tiny_pretrain_config("clm", "llama", corpus, steps=12)
        c.model.update(num_heads=4, num_kv_heads=2, mlp_dim=64, activation="silu", layer_norm_eps=1e-5,
                       tie_embeddings=True, use_pooler=False, dropout=0.0, attention_dropout=0.0)
    with pytest.MonkeyPatch.context() as mp:  # module scope: the function-scoped fixtures are not active yet
        mp.setenv("TLJAX_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
        pretrain.run(c, workdir)
    return workdir


@pytest.fixture(scope="module")
def bert_run(text_corpus, tmp_path_factory):
    return _pretrain("bert", text_corpus, tmp_path_factory)


@pytest.fixture(scope="module")
def llama_run(text_corpus, tmp_path_factory):
    return _pretrain("llama", text_corpus, tmp_path_factory)


def lora_config(run, task, **kw):
    c = finetune_config()
    c.init_from = str(run)
    c.strategy = "lora"
    c.data.update(train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv", num_labeled=100, validation_fraction=0.4,
                  max_len=16, batch_size=8)
    c.train.update(steps=50, lr=1e-2, warmup_steps=5, eval_every=25, log_every=25)
    c.lora.update(rank=4, targets=lora.DEFAULT_TARGETS + lora.MLP_TARGETS)
    c.mesh.shape = (1, 1, 1)
    c.forgetting.update(sequences=16, batch_size=8)
    c.update(kw)
    return c


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_lora_finetune_learns_a_keyword_task(kind, request, task, tmp_path):
    run = request.getfixturevalue(f"{kind}_run")
    summary = finetune.run(lora_config(run, task), tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["strategy"] == "lora" and saved["train_step_compilations"] == 1
    head = 2 * 32 + 2
    assert saved["trainable_params"] == saved["lora"]["adapter_params"] + head
    assert saved["optimizer_state_bytes"] <= 2 * 4 * saved["trainable_params"] + 1024  # no state for the base
    assert saved["frozen_params"] > 5 * saved["trainable_params"]
    assert summary["test_accuracy"] >= 0.8, (kind, summary["test_accuracy"])  # the marker word is learnable
    f = saved["forgetting"]
    assert f is not None and f["pretrain_loss_after"] != f["pretrain_loss_before"]  # the merged weights differ


def test_bad_lora_settings_are_one_line_errors(bert_run, task, tmp_path):
    run = bert_run
    cases = [
        (dict(rank=0), "lora.rank=0"),
        (dict(alpha=-1.0), "lora.alpha=-1.0"),
        (dict(dropout=1.0), "lora.dropout=1.0"),
        (dict(targets=()), "lora.targets"),
        (dict(targets=("attention/(query",)), "lora.targets"),
        (dict(targets=("nothing_like_this",)), "match no kernel"),
    ]
    for lora_kw, message in cases:
        c = lora_config(run, task)
        c.lora.update(lora_kw)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as e:
            finetune.run(c, tmp_path / "bad")
        assert "\n" not in str(e.value)
    c = lora_config(run, task, strategy="full")
    with pytest.raises(ConfigError, match="lora.rank is set but strategy=full"):
        finetune.run(c, tmp_path / "bad2")


def test_lora_preset_groups():
    """Adapters and the head (with pooling=cls the pooler too) train; every backbone leaf is frozen."""
    cfg = TransformerConfig(**MODELS["bert"])
    model = SequenceClassifier(cfg, 2, pooling="cls")
    ids = jnp.ones((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda r: model.init(r, ids, ids)["params"], jax.random.key(0))
    params = {**nn.meta.unbox(boxed), lora.KEY: jax.eval_shape(
        lambda r: lora.init(lora.plan(boxed, lora.DEFAULT_TARGETS), 2, r), jax.random.key(0))}
    labels, plans = policy.group_labels(params, policy.strategy_rules("lora", 2))
    for path, group in traverse_util.flatten_dict(labels).items():
        expected = {"lora": "adapters", "classifier": "head", "pooler": "head"}.get(path[0], "base")
        assert group == expected, path
    assert plans["base"].frozen and not plans["adapters"].frozen and not plans["head"].frozen
