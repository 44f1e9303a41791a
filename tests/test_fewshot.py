"""Few-shot transfer: the label budget includes validation for every method; LP-FT, SetFit-style contrastive
body tuning and self-training, each against an independent reference."""
import json
import pathlib

import jax
import numpy as np
import pytest

from conftest import write_keyword_task
from tljax import finetune
from tljax.config import ConfigError, load_config_file
from tljax.data import labeled
from tljax.models import SequenceClassifier, TransformerConfig
from tljax.tasks import classify, contrastive

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


@pytest.fixture(scope="module")
def csv_task(tmp_path_factory):
    return write_keyword_task(tmp_path_factory.mktemp("task"), (("train", 200), ("test", 60)))


def ft_config(run, task, strategy="full", **kw):
    c = load_config_file(CONFIGS / "finetune_classify.py")  # the file users run
    c.init_from, c.strategy = str(run), strategy
    c.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv", num_labeled=30,
                  max_len=16, batch_size=8)
    c.train.update(steps=8, lr=3e-3, warmup_steps=1, eval_every=4, log_every=4, checkpoint_every=0)
    c.setfit.pair_iterations = 2
    c.self_training.update(max_unlabeled=50)
    c.mesh.shape = (1, 1, 1)
    c.forgetting.enabled = False
    for key, value in kw.items():
        node, *path = key.split(".")
        target = c
        for part in [node, *path][:-1]:
            target = target[part]
        target[[node, *path][-1]] = value
    return c


# --- the budget rule, every method ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", [
    dict(strategy="features"), dict(strategy="full"), dict(strategy="full", recipe="lpft"),
    dict(strategy="features", **{"self_training.rounds": 1}),
    dict(strategy="full", recipe="setfit", **{"self_training.rounds": 1}),
    # a causal LM's prompt scores: the tiny random Llama of the prompting tests
    dict(strategy="features", recipe="prompt_probe", start="tiny_llama",
         **{"self_training.rounds": 1, "prompt.prompt": "Text: {text} Label:",
            "prompt.verbalizer": '{"neg": " little", "pos": " great"}', "prompt.batch_size": 8})])
def test_no_method_reads_more_labels_than_the_budget(method, pretrained_run, csv_task, tmp_path, monkeypatch,
                                                     request):
    """With num_labeled=30, every label a method reads (train, validation, anything) is one of 30 examples."""
    loaded = []
    real_load = labeled.load_labeled
    monkeypatch.setattr(labeled, "load_labeled", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    method = dict(method)
    start = f"hf:{request.getfixturevalue('tiny_llama')[0]}" if method.pop("start", "") else pretrained_run
    finetune.run(ft_config(start, csv_task, **method), tmp_path)
    (data,) = loaded
    # The labeled arrays a run gets hold at most 30 labels; the rest of the training file is texts only.
    assert len(data.train.labels) + len(data.validation.labels) == 30 == data.labels_used
    assert len(data.unlabeled) == 170 and all(isinstance(t, str) for t in data.unlabeled)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["labels_used"] == 30 and saved["validation_source"] == "label budget"
    assert saved["num_labeled"] + saved["num_validation"] == 30


def test_word_vectors_obey_the_budget(csv_task, tmp_path):
    rng = np.random.default_rng(1)
    words = "the of and to in a is that for it as was with be by on not he this are great little".split()
    lines = [f"{len(words)} 8"] + [w + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=8)) for w in words]
    (tmp_path / "vectors.txt").write_text("\n".join(lines) + "\n")
    summary = finetune.run(ft_config(tmp_path, csv_task, "features"), tmp_path / "run")
    assert summary["labels_used"] == 30 and summary["num_labeled"] == 30  # C by CV: the probe trains on all 30


def test_explicit_validation_is_counted_and_old_configs_fail(pretrained_run, csv_task, tmp_path):
    c = ft_config(pretrained_run, csv_task, "features", **{"data.validation": f"csv:{csv_task}/test.csv"})
    summary = finetune.run(c, tmp_path / "extra")
    assert summary["labels_used"] == 30 + 60 and summary["num_labeled"] == 30 and summary["num_validation"] == 60
    assert summary["validation_source"] == f"csv:{csv_task}/test.csv"
    old = ft_config(pretrained_run, csv_task, "features")
    old.data.num_validation = 500
    with pytest.raises(ConfigError, match="num_validation is no longer supported"):
        finetune.run(old, tmp_path / "old")
    with pytest.raises(ConfigError, match="recipe=lpft trains the encoder"):
        finetune.run(ft_config(pretrained_run, csv_task, "features", recipe="lpft"), tmp_path / "bad")
    with pytest.raises(ConfigError, match="self_training.rounds needs a probe head"):
        finetune.run(ft_config(pretrained_run, csv_task, "full", **{"self_training.rounds": 1}), tmp_path / "bad2")


# --- LP-FT -------------------------------------------------------------------------------------------------

def test_probe_head_reproduces_the_decision_function():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.5, 2.0, 5.0], size=(60, 3))
    for classes in (2, 3):
        y = np.arange(60) % classes
        x_shift = x + y[:, None]
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.3)).fit(x_shift, y)
        head = finetune.probe_head(probe, classes)
        assert head["kernel"].shape == (3, classes) and head["bias"].shape == (classes,)
        logits = x_shift @ head["kernel"].astype(np.float64) + head["bias"]
        if classes == 2:
            np.testing.assert_allclose(logits[:, 1] - logits[:, 0], probe.decision_function(x_shift), rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_allclose(logits, probe.decision_function(x_shift), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(jax.nn.softmax(logits, -1), probe.predict_proba(x_shift), atol=1e-5)


def test_lpft_head_starts_from_the_probe(pretrained_run, csv_task, tmp_path):
    """Step-0 logits of the LP-FT model equal the probe's decision function on the frozen features."""
    from tljax.init_from import resolve
    c = ft_config(pretrained_run, csv_task, "full", recipe="lpft")
    pre = resolve(c.init_from, "")
    data = labeled.load_labeled(c.data, c.seed)
    model = SequenceClassifier(pre.model, 2, pooling="mean", head_dropout=c.head_dropout)
    encoded = {n: classify.encode_texts(pre.tokenizer, getattr(data, n).texts, 16) for n in ("train", "validation")}
    fresh = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), *[a[:1] for a in encoded["train"]])["params"])
    fresh = jax.tree.map(np.asarray, __import__("flax").linen.meta.unbox(fresh))
    start, _ = finetune.merge_pretrained(fresh, pre.params)
    y = {"train": data.train.labels, "validation": data.validation.labels}
    params, info = finetune._linear_probe_head(c, model, start, encoded, y, 2)
    # Independent reference: features, probe fit the same way, its decision function.
    feats = finetune.extract_features(finetune.features_fn(model), start, *encoded["train"], pre.model.hidden_size)
    probe, _, chosen = finetune.select_probe(c, feats, y["train"], c.seed)
    assert chosen == info["best_C"]
    logits = np.asarray(model.apply({"params": params}, *encoded["train"], deterministic=True))
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], probe.decision_function(feats), rtol=1e-4, atol=1e-4)
    # Everything but the head is the pretrained encoder.
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(start["encoder"])))
    summary = finetune.run(c, tmp_path)
    assert summary["lpft_probe"]["best_C"] == info["best_C"] and summary["recipe"] == "lpft"


# --- SetFit-style contrastive body tuning ---------------------------------------------------------------------

def test_pair_sampling_is_balanced():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 5)
    pairs = contrastive.sample_pairs(labels, iterations=4, seed=1)
    assert pairs.shape == (2 * 15 * 4, 3)
    assert (pairs[:, 2] == 1).sum() == (pairs[:, 2] == 0).sum() == 15 * 4
    # Every example anchors exactly one positive and one negative pair per iteration.
    anchors = pairs[:, 0]
    assert np.bincount(anchors[pairs[:, 2] == 1], minlength=15).tolist() == [4] * 15
    assert np.bincount(anchors[pairs[:, 2] == 0], minlength=15).tolist() == [4] * 15
    same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    assert np.array_equal(same, pairs[:, 2] == 1)
    assert not np.any((pairs[:, 0] == pairs[:, 1]) & (pairs[:, 2] == 1))  # never paired with itself
    assert np.array_equal(pairs, contrastive.sample_pairs(labels, 4, seed=1))  # seeded


def test_cosine_loss_against_numpy():
    cfg = TransformerConfig(kind="bert", vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
                            max_len=16, dropout=0.0, attention_dropout=0.0)
    model = SequenceClassifier(cfg, 2, pooling="mean", head_dropout=0.0)
    rng = np.random.default_rng(0)
    ids_l, ids_r = rng.integers(5, 50, (6, 10)).astype(np.int32), rng.integers(5, 50, (6, 10)).astype(np.int32)
    mask_l = (np.arange(10)[None] < rng.integers(3, 11, (6, 1))).astype(np.int32)
    mask_r = (np.arange(10)[None] < rng.integers(3, 11, (6, 1))).astype(np.int32)
    target = np.array([1, 0, 1, 0, 0, 1], np.float32)
    params = model.init(jax.random.key(0), ids_l, mask_l)["params"]
    params = __import__("flax").linen.meta.unbox(params)
    loss, metrics = contrastive.train_loss(model)(params, (ids_l, mask_l, ids_r, mask_r, target), jax.random.key(1))
    feat = lambda i, m: np.asarray(model.apply({"params": params}, i, m, method=SequenceClassifier.features), np.float64)
    a, b = feat(ids_l, mask_l), feat(ids_r, mask_r)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(float(loss), np.mean((cos - target) ** 2), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["cosine_gap"]), cos[target == 1].mean() - cos[target == 0].mean(), rtol=1e-5)
    # A text paired with itself at target 1 costs nothing.
    same, _ = contrastive.train_loss(model)(params, (ids_l, mask_l, ids_l, mask_l, np.ones(6, np.float32)),
                                            jax.random.key(1))
    assert float(same) < 1e-10


def test_setfit_recipe_trains_the_body_on_the_whole_budget(pretrained_run, csv_task, tmp_path):
    summary = finetune.run(ft_config(pretrained_run, csv_task, "full", recipe="setfit"), tmp_path)
    assert summary["setfit_pairs"] == 2 * 30 * 2 and summary["setfit_steps"] == 15  # 120 pairs / batch 8
    assert summary["labels_used"] == 30 and summary["train_step_compilations"] >= 1
    assert summary["body_trainable_params"] > 0 and 0.0 <= summary["test_accuracy"] <= 1.0


# --- self-training -----------------------------------------------------------------------------------------

def test_self_training_pool_never_holds_test_texts():
    with pytest.raises(ValueError, match="test texts"):
        finetune.unlabeled_pool(["a", "b", "the test one"], ["the test one", "x"], 10, 0)
    pool = finetune.unlabeled_pool([f"t{i}" for i in range(20)], ["x"], 5, 0)
    assert len(pool) == 5 and len(set(pool)) == 5


def test_self_training_keeps_confident_balanced_pseudo_labels():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(0)
    centres = np.array([[-2.0, 0.0], [2.0, 0.0]])
    x = np.concatenate([centres[k] + rng.normal(size=(3, 2)) for k in (0, 1)])
    y = np.repeat([0, 1], 3)
    pool = np.concatenate([centres[k] + rng.normal(size=(n, 2)) for k, n in ((0, 100), (1, 40))])
    cfg = ft_config("x", "y", "features", **{"self_training.rounds": 1, "self_training.threshold": 0.8})
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0)).fit(x, y)
    proba = probe.predict_proba(pool)
    confident = [int(((proba.argmax(1) == k) & (proba.max(1) >= 0.8)).sum()) for k in (0, 1)]
    new, rounds = finetune.self_train(cfg, probe, x, y, pool, 0)
    assert rounds == [{"round": 1, "kept": 2 * min(confident), "per_class": min(confident)}]
    # The refit probe is the same estimator trained on labeled + kept pseudo-labels (independent refit).
    order = [np.flatnonzero((proba.argmax(1) == k) & (proba.max(1) >= 0.8)) for k in (0, 1)]
    keep = np.concatenate([o[np.argsort(-proba.max(1)[o], kind="stable")[:min(confident)]] for o in order])
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0)).fit(
        np.concatenate([x, pool[keep]]), np.concatenate([y, proba.argmax(1)[keep]]))
    np.testing.assert_allclose(new.decision_function(pool), ref.decision_function(pool), rtol=1e-6)


def test_experiment_cells_of_the_recipes():
    """The learning-curve grid runs the recipes as methods, each under the budget rule."""
    from tljax import experiment
    config = load_config_file(CONFIGS / "experiments" / "learning_curve.py")
    assert not set(config.methods) & {"minilm_lpft", "minilm_setfit"}  # opt-in
    starts = {"minilm": {"init_from": "hf:minilm"}}
    cells = {m: experiment.cell_config(config, experiment.Cell(m, 100, 3), starts, 9956)
             for m in ("minilm_lpft", "minilm_setfit", "minilm_self_training", "minilm_setfit_st", "minilm_full")}
    assert (cells["minilm_lpft"].recipe, cells["minilm_lpft"].train.lr) == ("lpft", 1e-5)
    assert (cells["minilm_setfit"].recipe, cells["minilm_setfit"].train.lr) == ("setfit", 2e-5)
    assert cells["minilm_self_training"].strategy == "features" and cells["minilm_self_training"].self_training.rounds == 2
    assert cells["minilm_setfit_st"].self_training.rounds == 2 and cells["minilm_full"].recipe == ""
    for c in cells.values():
        assert c.data.num_labeled == 100 and "num_validation" not in c.data and c.seed == 3
        experiment.config_lib.validate_finetune(c)
    # 20 epochs over the 80 training examples of a 100-label budget (20 are the validation carve-out).
    assert cells["minilm_full"].train.steps == 100


def test_wordnet_topics_parse_and_split():
    """The second few-shot set: a data.noun line -> (offset, topic, definition before its examples, without
    the synset's words); only the six topic files; the split puts each synset on one side, the test side
    class-balanced, and a definition text never on both sides."""
    import importlib.util
    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "make_wordnet_topics.py"
    spec = importlib.util.spec_from_file_location("make_wordnet_topics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by",
             "01321123 05 n 01 cub 0 001 @ 01320694 n 0000 | the young of certain carnivorous mammals such as "
             "the bear or wolf or lion",
             "02084071 05 n 02 dog 0 domestic_dog 0 003 @ 02083346 n 0000 | a member of the genus Canis; "
             "\"the dog barked all night\"",
             "03082979 06 n 01 computer 0 000 | a machine for performing calculations automatically",
             "07747607 13 n 01 orange 0 000 | round yellow to orange fruit"]
    rows = module.definitions(lines)
    assert rows == [("01321123", "animal", "the young of certain carnivorous mammals such as the bear or wolf or lion"),
                    ("02084071", "animal", "a member of the genus Canis"),
                    ("07747607", "food", "round yellow to orange fruit")]
    many = [(f"{i:08d}", ["animal", "plant"][i % 2], f"definition number {i} of something") for i in range(400)]
    many.append(("99999999", "plant", many[0][2]))  # the same text as a synset that may land in test
    train, test = module.split(many, test_per_class=5)
    assert [sum(1 for _, y in test if y == c) for c in ("animal", "plant")] == [5, 5]
    assert not {t for t, _ in train} & {t for t, _ in test}
    in_pool = sum(1 for o, _, _ in many if module.stable_hash(o) % 10 == 0)
    assert 10 <= in_pool < 80 and len(train) <= len(many) - in_pool
