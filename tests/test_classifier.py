"""The classifier a fine-tuning run leaves (model/, predictions.csv), loaded and used: tljax.load_classifier,
tljax predict / evaluate, and the export to transformers' sequence-classification models (checked against
PyTorch transformers' pipeline)."""
import csv
import io
import json
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

import torch  # noqa: F401  (a test dependency: the export parity needs PyTorch transformers)
import transformers

import tljax
from conftest import write_keyword_task
from tljax import classifier, experiment, finetune, hf
from tljax import config as config_lib
from tljax.cli import main as cli_main
from tljax.data import tokenizer as tok_lib
from tljax.defaults import finetune_config
from tljax.models import SequenceClassifier, TransformerConfig

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


@pytest.fixture(autouse=True)
def full_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Two-class keyword task in CSV (columns sentence, sentiment), plus the test split as JSONL."""
    root = write_keyword_task(tmp_path_factory.mktemp("task"), (("train", 160), ("test", 50)),
                              columns=("sentence", "sentiment"))
    with open(root / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    (root / "test.jsonl").write_text("".join(json.dumps({"text": r["sentence"]}) + "\n" for r in rows))
    return root


def ft_config(init_from, task, strategy, **kw):
    c = finetune_config()
    c.init_from, c.strategy = str(init_from), strategy
    c.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv", text_field="sentence",
                  label_field="sentiment", num_labeled=70, validation_fraction=0.43, max_len=16, batch_size=8)
    c.train.update(steps=40, lr=3e-3, warmup_steps=4, eval_every=10, log_every=10)
    c.mesh.shape = (1, 1, 1)
    c.forgetting.enabled = False
    c.update(kw)
    return c


def _run(tmp_path_factory, name, config):
    workdir = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLJAX_DATA_DIR", str(tmp_path_factory.mktemp("cache_" + name)))
        mp.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
        summary = finetune.run(config, workdir)
    return workdir, summary


@pytest.fixture(scope="module")
def full_run(pretrained_run, task, tmp_path_factory):
    """A full fine-tuning run with [CLS] + pooler pooling (exportable to BertForSequenceClassification)."""
    return _run(tmp_path_factory, "full", ft_config(pretrained_run, task, "full", pooling="cls"))


def _read_predictions(workdir):
    with open(workdir / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = [k[len("prob_"):] for k in rows[0] if k.startswith("prob_")]
    proba = np.asarray([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    return rows, names, proba


def _test_texts(task):
    with open(task / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["sentence"] for r in rows], [r["sentiment"] for r in rows]


def _assert_round_trip(workdir, summary, task):
    """model/ loads and predicts exactly what the run reported for its test set."""
    rows, names, proba = _read_predictions(workdir)
    texts, labels = _test_texts(task)
    assert [r["text"] for r in rows] == texts and [r["label"] for r in rows] == labels
    assert names == summary["label_names"]
    reported = [r["predicted"] for r in rows]
    assert np.mean(np.asarray(reported) == np.asarray(labels)) == summary["test_accuracy"]
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    clf = tljax.load_classifier(workdir)
    assert clf.label_names == summary["label_names"]
    assert clf.predict(texts) == reported
    np.testing.assert_allclose(clf.predict_proba(texts), proba, atol=1e-6)  # the CSV keeps 8 digits
    # Nothing in model/ is a pickle: JSON, safetensors, tokenizer files, npz without objects.
    files = [p for p in (workdir / "model").rglob("*") if p.is_file()]
    assert files and not any(p.suffix in (".pkl", ".pickle", ".bin", ".joblib") for p in files)
    for p in files:
        if p.suffix == ".npz":
            np.load(p, allow_pickle=False)
    return clf


# ----------------------------------------------------------------------------------------------------
# Saved -> loaded -> the run's own predictions
# ----------------------------------------------------------------------------------------------------
def test_full_run_round_trip(full_run, pretrained_run, task):
    from tljax.data import labeled
    workdir, summary = full_run
    clf = _assert_round_trip(workdir, summary, task)
    assert clf.kind == "finetuned" and clf.pooling == "cls" and clf.max_len == 16
    # The saved parameters are the best-validation ones: on the run's validation split the classifier
    # scores the accuracy the run selected its step by.
    validation = labeled.load_labeled(ft_config(pretrained_run, task, "full").data, 0).validation
    predicted = np.asarray(clf.predict(validation.texts))
    names = np.asarray(clf.label_names)
    assert np.mean(predicted == names[validation.labels]) == summary["best_validation_accuracy"]
    meta = json.loads((workdir / "model" / "classifier.json").read_text())
    assert meta["source"]["strategy"] == "full" and meta["batch_size"] == 8 * 4
    with pytest.raises(TypeError, match="list of texts"):
        clf.predict("great film")


@pytest.mark.parametrize("probe", ["logreg", "mlp"])
def test_features_run_round_trip(probe, pretrained_run, task, tmp_path_factory):
    config = ft_config(pretrained_run, task, "features")
    config.probe.update(kind=probe, c_grid=(0.1, 1.0), mlp_hidden=16)
    workdir, summary = _run(tmp_path_factory, f"features_{probe}", config)
    clf = _assert_round_trip(workdir, summary, task)
    assert clf.kind == "probe" and clf.meta["probe"]["kind"] == probe
    assert not any(k.startswith("classifier") for k in clf.params)  # the encoder only


def test_word_vectors_run_round_trip(task, tmp_path, tmp_path_factory):
    rng = np.random.default_rng(1)
    words = "the of and to in a is that for it as was with be by on not he this are great little".split()
    lines = [f"{len(words)} 8"] + [w + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=8)) for w in words]
    (tmp_path / "vectors.txt").write_text("\n".join(lines) + "\n")
    workdir, summary = _run(tmp_path_factory, "w2v", ft_config(tmp_path / "vectors.txt", task, "features"))
    clf = _assert_round_trip(workdir, summary, task)
    assert clf.kind == "word_vectors" and clf.word_vectors.vectors.shape == (len(words), 8)


def test_save_model_off_writes_predictions_only(pretrained_run, task, tmp_path_factory, capsys):
    workdir, _ = _run(tmp_path_factory, "nomodel", ft_config(pretrained_run, task, "features", save_model=False))
    assert (workdir / "predictions.csv").exists() and not (workdir / "model").exists()
    with pytest.raises(classifier.ClassifierError, match="save_model=False"):
        tljax.load_classifier(workdir)
    with pytest.raises(SystemExit) as e:  # convert names the same reason
        cli_main(["convert", "--from", str(workdir), "--to", f"hf:{workdir / 'hf'}"])
    assert e.value.code == 2 and "save_model=False" in capsys.readouterr().err



@pytest.mark.parametrize("kind,classes", [("logreg", 2), ("logreg", 3), ("mlp", 2), ("mlp", 3)])
def test_probe_arrays_compute_what_sklearn_computes(kind, classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(classes)
    x = (rng.normal(size=(120, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6)).astype(np.float32)
    y = np.digitize(x[:, 0] + x[:, 1], [0.0] if classes == 2 else [-1.0, 1.0])
    assert sorted(set(y)) == list(range(classes))
    clf = (LogisticRegression(C=0.5, max_iter=500) if kind == "logreg"
           else MLPClassifier(hidden_layer_sizes=(7,), max_iter=300, random_state=0))
    pipe = make_pipeline(StandardScaler(), clf).fit(x, y)
    arrays, info = classifier.probe_arrays(pipe)
    new = (rng.normal(size=(50, 6)) * 2).astype(np.float32)
    top, proba = classifier.probe_proba(arrays, info, new, classes)
    np.testing.assert_array_equal(top, pipe.predict(new))
    np.testing.assert_allclose(proba, pipe.predict_proba(new), atol=1e-6)  # float32, as fitted
    # A class the probe never saw (label id 3 of 4 here) gets probability 0.
    top, proba4 = classifier.probe_proba(arrays, info, new, classes + 1)
    np.testing.assert_array_equal(proba4[:, :classes], proba)
    assert not proba4[:, classes].any()


# ----------------------------------------------------------------------------------------------------
# tljax evaluate / predict
# ----------------------------------------------------------------------------------------------------
def test_evaluate_gives_the_runs_numbers(full_run, task, tmp_path, capsys):
    workdir, summary = full_run
    cli_main(["evaluate", "--model", str(workdir), "--data", f"csv:{task}/test.csv", "--text_field", "sentence",
              "--label_field=sentiment", "--json", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["accuracy"] == summary["test_accuracy"] and result["macro_f1"] == summary["test_macro_f1"]
    confusion = np.asarray(result["confusion"])
    assert confusion.sum() == 50 and np.trace(confusion) / 50 == summary["test_accuracy"]
    assert f"accuracy   {summary['test_accuracy']:.4f}" in out and "confusion" in out


def test_predict_cli_csv_jsonl_and_stdin(full_run, task, tmp_path, capsys, monkeypatch):
    workdir, _ = full_run
    texts, _ = _test_texts(task)
    clf = tljax.load_classifier(workdir)
    expected, proba = clf.predict(texts), clf.predict_proba(texts)
    cli_main(["predict", "--model", str(workdir), "--input", f"csv:{task}/test.csv", "--text_field", "sentence",
              "--output", str(tmp_path / "p.csv")])
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["text", "predicted", "prob_neg", "prob_pos"]
    assert [r["predicted"] for r in rows] == expected and [r["text"] for r in rows] == texts
    np.testing.assert_allclose([[float(r["prob_neg"]), float(r["prob_pos"])] for r in rows], proba, atol=1e-7)

    cli_main(["predict", "--model", str(workdir / "model"), "--input", f"jsonl:{task}/test.jsonl",
              "--output", str(tmp_path / "p.jsonl")])
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["predicted"] for r in lines] == expected
    np.testing.assert_allclose([[r["probabilities"]["neg"], r["probabilities"]["pos"]] for r in lines], proba,
                               atol=1e-7)

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(texts[:3]) + "\n\n").encode())))
    cli_main(["predict", "--model", str(workdir), "--input", "-"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["predicted"] for r in rows] == expected[:3] and [r["text"] for r in rows] == texts[:3]


@pytest.mark.parametrize("case,message", [
    ("missing_column", "has no column 'text' (columns: sentence, label); set --text_field"),
    ("evaluate_missing_label", "has no column 'label' (columns: text); set --label_field"),
    ("not_utf8", "is not UTF-8"),
    ("empty_file", "is empty"),
    ("header_only", "holds no examples"),
    ("not_a_classifier", "is not a tljax classifier"),
    ("no_such_model", "does not exist"),
    ("no_such_input", "does not exist"),
    ("bad_output", "must end in .csv or .jsonl"),
    ("no_output_folder", "does not exist; create it first"),
    ("stdin_not_utf8", "stdin is not UTF-8"),
    ("unknown_label", "label 'meh'"),
])
def test_bad_input_is_one_line_exit_2(case, message, full_run, pretrained_run, task, tmp_path, capsys,
                                      monkeypatch):
    workdir, _ = full_run
    model, source, extra, command = str(workdir), tmp_path / "in.csv", [], "predict"
    if case == "missing_column":
        source.write_text("sentence,label\nhello there,pos\n")
    elif case == "not_utf8":
        source.write_bytes("text\ncaf\xe9 au lait\n".encode("latin-1"))
    elif case == "empty_file":
        source.write_bytes(b"")
    elif case == "header_only":
        source.write_text("text\n")
    elif case == "not_a_classifier":
        model = str(pretrained_run)
        source.write_text("text\nhello\n")
    elif case == "no_such_model":
        model = str(tmp_path / "nope")
        source.write_text("text\nhello\n")
    elif case == "bad_output":
        source.write_text("text\nhello\n")
        extra = ["--output", str(tmp_path / "out.txt")]
    elif case == "no_output_folder":
        source.write_text("text\nhello\n")
        extra = ["--output", str(tmp_path / "missing" / "out.csv")]
    elif case == "stdin_not_utf8":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n")))
    elif case == "evaluate_missing_label":
        source.write_text("text\nhello\n")
        command = "evaluate"
    elif case == "unknown_label":
        source.write_text("text,label\nhello,meh\n")
        command = "evaluate"
    spec = "-" if case == "stdin_not_utf8" else f"csv:{source}"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_main([command, "--model", model, "--data" if command == "evaluate" else "--input", spec] + extra)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("tljax: error: ") and err.count("\n") == 1 and message in err, err


# ----------------------------------------------------------------------------------------------------
# Export to transformers
# ----------------------------------------------------------------------------------------------------
def _pipeline_proba(folder, texts, label_names, batch_size=1):
    pipe = transformers.pipeline("text-classification", model=str(folder), top_k=None, truncation=True,
                                 batch_size=batch_size, device="cpu")
    out = pipe(texts)
    return np.asarray([[{d["label"]: d["score"] for d in row}[n] for n in label_names] for row in out])


def _parity(clf, folder, texts):
    expected = clf.predict_proba(texts)
    for batch_size in (1, 4):  # 4: padded batches
        got = _pipeline_proba(folder, texts, clf.label_names, batch_size)
        diff = float(np.abs(got - expected).max())
        print(f"{clf.config.kind} export, batch {batch_size}: max prob diff {diff:.2e}")
        assert diff <= TOL
        assert [clf.label_names[i] for i in got.argmax(1)] == clf.predict(texts)


def test_bert_run_exports_to_bert_for_sequence_classification(full_run, task, tmp_path, capsys):
    workdir, _ = full_run
    cli_main(["convert", "--from", str(workdir), "--to", f"hf:{tmp_path / 'hf'}"])
    assert "sequence classifier" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf"))
    assert type(model).__name__ == "BertForSequenceClassification"
    texts, _ = _test_texts(task)
    long_text = " ".join(["great film"] * 30)  # past max_len: truncation=True cuts where tljax does
    _parity(tljax.load_classifier(workdir), tmp_path / "hf", texts[:12] + [long_text])


def _random_classifier(tmp_path, kind, num_classes, pooling, tokenizer, max_len=24, seed=0, probe=None):
    """A SequenceClassifier with random parameters everywhere (head bias too), saved as model/; with
    ``probe`` (a fitted scikit-learn pipeline on 24-d features), its encoder + that probe."""
    cfg = TransformerConfig(kind=kind, vocab_size=len(tokenizer) + 7, hidden_size=24, num_layers=2, num_heads=3,
                            mlp_dim=40, max_len=max_len, activation="gelu" if kind == "bert" else "gelu_new",
                            layer_norm_eps=1e-12 if kind == "bert" else 1e-5, use_pooler=kind == "bert")
    model = SequenceClassifier(cfg, num_classes, pooling=pooling)
    ids = np.ones((1, 4), np.int32)
    params = jax.tree.map(np.asarray, nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), ids, ids)["params"]))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: (p + rng.normal(size=p.shape) * 0.3).astype(np.float32), params)
    if probe is not None:
        params = {k: v for k, v in params.items() if k != "classifier"}
    return classifier.save_model(tmp_path / "run", kind="probe" if probe is not None else "finetuned",
                                 label_names=[f"c{i}" for i in range(num_classes)], max_len=max_len,
                                 pooling=pooling, batch_size=16, model_config=cfg, params=params,
                                 tokenizer=tokenizer, probe=probe, source={"head_dropout": 0.1})


TEXTS = ["the cat sat on the mat", "a dog ran off", "the hat", "and the dog sat on the cat and the mat",
         "cat", "the mat and the hat and the dog ran off with the cat " * 3]


def test_gpt2_classifier_exports_to_gpt2_for_sequence_classification(tmp_path):
    tokenizer = tok_lib.train_byte_bpe(["the cat sat on the mat and the dog ran off with the hat"] * 20, 280)
    _random_classifier(tmp_path, "gpt", 3, "last", tokenizer)
    clf = tljax.load_classifier(tmp_path / "run")
    assert np.abs(clf.params["classifier"]["bias"]).max() > 0.05  # the bias that export folds into ln_f
    out = hf.export_classifier_hf(tmp_path / "run", f"hf:{tmp_path / 'hf'}")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["pad_token_id"] == tokenizer.pad_token_id is not None
    _parity(clf, out, TEXTS)


def test_bert_three_classes_and_what_cannot_be_exported(tmp_path):
    tokenizer = _bert_tokenizer(tmp_path)
    _random_classifier(tmp_path / "cls", "bert", 3, "cls", tokenizer)
    clf = tljax.load_classifier(tmp_path / "cls" / "run")
    _parity(clf, hf.export_classifier_hf(clf, tmp_path / "cls_hf"), TEXTS)
    # Mean pooling (tljax's BERT default) has no BertForSequenceClassification equivalent: named, with the fix.
    _random_classifier(tmp_path / "mean", "bert", 2, "mean", tokenizer)
    with pytest.raises(hf.HFError, match=r"--config.pooling=cls"):
        hf.export_classifier_hf(tmp_path / "mean" / "run", tmp_path / "mean_hf")
    assert not (tmp_path / "mean_hf").exists()


def _bert_tokenizer(folder):
    words = "the cat sat on mat a dog ran off hat and with".split()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    return transformers.BertTokenizerFast(vocab=str(folder / "vocab.txt"))


@pytest.mark.parametrize("kind,classes", [("gpt", 2), ("bert", 3)])
def test_logreg_probe_classifiers_export_with_the_probe_as_head(kind, classes, tmp_path, capsys):
    """A features run's StandardScaler + logistic regression is one linear layer on the pooled features:
    exported as the sequence-classification head (binary: softmax([0, s]) = the probe's sigmoid)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    tokenizer = (tok_lib.train_byte_bpe(["the cat sat on the mat and the dog ran off with the hat"] * 20, 280)
                 if kind == "gpt" else _bert_tokenizer(tmp_path))
    rng = np.random.default_rng(classes)
    x, y = rng.normal(size=(60, 24)) * rng.uniform(0.2, 2, 24), np.arange(60) % classes
    logreg = make_pipeline(StandardScaler(), LogisticRegression(C=10.0)).fit(x, y)
    _random_classifier(tmp_path / "logreg", kind, classes, "last" if kind == "gpt" else "cls", tokenizer, probe=logreg)
    clf = tljax.load_classifier(tmp_path / "logreg" / "run")
    assert clf.kind == "probe"
    cli_main(["convert", "--from", str(tmp_path / "logreg" / "run"), "--to", f"hf:{tmp_path / 'hf'}"])
    _parity(clf, tmp_path / "hf", TEXTS)
    # An MLP probe is no linear head: refused in one line, naming what can be exported.
    mlp = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(5,), max_iter=20)).fit(x, y)
    _random_classifier(tmp_path / "mlp", kind, classes, "last" if kind == "gpt" else "cls", tokenizer, probe=mlp)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_main(["convert", "--from", str(tmp_path / "mlp" / "run"), "--to", f"hf:{tmp_path / 'hf_mlp'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "MLP probe" in err and "--config.strategy=full" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------
# The experiment keeps models only when asked
# ----------------------------------------------------------------------------------------------------
def test_experiment_cells_keep_models_only_when_asked():
    from pathlib import Path
    config = config_lib.load_config_file(Path(__file__).parents[1] / "configs" / "experiments" / "learning_curve.py",
                                         "quick")
    starts = {"tljax": {"init_from": "runs/x"}, "minilm": {"init_from": "hf:minilm"}}
    cell = experiment.Cell("tljax_full", 100, 0)
    assert experiment.cell_config(config, cell, starts, 1000).save_model is False
    config.keep_models = True
    assert experiment.cell_config(config, cell, starts, 1000).save_model is True
    # Keeping models changes no result: a finished cell is reused whatever the setting is now.
    from tljax.workdir import result_differences
    assert result_differences({"save_model": True, "seed": 0}, {"save_model": False, "seed": 0}) == []
