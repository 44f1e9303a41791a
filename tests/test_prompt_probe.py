"""recipe=prompt_probe: a probe on a causal LM's prompt label scores (optionally followed by its pooled hidden
features). Checked against independent references: the features against transformers' PyTorch model on the
filled prompt, the probe against scikit-learn refit with the cross-validated C, the saved classifier against
the run's predictions.csv and the refit probe on new texts; bad starts and settings fail in one line and write
nothing."""
import csv
import json

import jax
import numpy as np
import pytest
import torch

import tljax
from conftest import write_keyword_task
from test_fewshot import ft_config
from test_zeroshot import hand_logprob
from tljax import finetune
from tljax.cli import main as cli_main
from tljax.data import labeled

PROMPT_TYPED = r"Text: {text}\nLabel:"  # as typed in a shell: the run reads "\n" as a newline
PROMPT = "Text: {text}\nLabel:"
# One run per variant: multi-token continuations averaged per token, scores only; single-token ones
# summed, scores + last-token hidden features.
VARIANTS = {"scores_mean": dict(verbalizer={"neg": " not the", "pos": " great and it"}, normalize="mean",
                                hidden=False),
            "scores_hidden": dict(verbalizer={"neg": " little", "pos": " great"}, normalize="sum", hidden=True)}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_keyword_task(tmp_path_factory.mktemp("task"), (("train", 80), ("test", 24)))


def prompt_probe_config(start: str, task, verbalizer: dict, **kw):
    settings = {"prompt.prompt": PROMPT_TYPED, "prompt.verbalizer": json.dumps(verbalizer), "prompt.batch_size": 4,
                "data.max_len": 64}
    return ft_config(start, task, "features", recipe="prompt_probe", **{**settings, **kw})


@pytest.fixture(scope="module", params=list(VARIANTS))
def prompt_run(request, tiny_llama, task, tmp_path_factory):
    """A prompt_probe run on 30 labels with what its probe was fit on captured: (variant, workdir, summary,
    {"data": the LabeledData, "features": split -> [N, C (+ H)], "labels": split -> [N]})."""
    variant = VARIANTS[request.param]
    folder = tiny_llama[0]
    config = prompt_probe_config(f"hf:{folder}", task, variant["verbalizer"],
                                 **{"prompt.normalize": variant["normalize"], "prompt_probe.hidden": variant["hidden"]})
    workdir, seen = tmp_path_factory.mktemp(request.param), {}
    real_fit, real_load = finetune.fit_probe, labeled.load_labeled

    def fit_probe(cfg, features, labels, *a, **k):
        seen.update(features=features, labels=labels)
        return real_fit(cfg, features, labels, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLJAX_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])  # the config's one-device mesh
        mp.setattr(finetune, "fit_probe", fit_probe)
        mp.setattr(labeled, "load_labeled", lambda *a, **k: seen.setdefault("data", real_load(*a, **k)))
        summary = finetune.run(config, workdir)
    return variant, workdir, summary, seen


def read_predictions(workdir):
    with open(workdir / "predictions.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_features_are_the_label_logprobs_of_the_filled_prompt(prompt_run, tiny_llama):
    variant, _, summary, seen = prompt_run
    _, model, tokenizer = tiny_llama
    verbalizer = variant["verbalizer"]
    for split in ("train", "validation", "test"):
        texts, feats = getattr(seen["data"], split).texts, seen["features"][split]
        assert feats.shape == (len(texts), len(verbalizer) + (36 if variant["hidden"] else 0)) and len(texts)
        for text, row in zip(texts, feats):
            for j, cont in enumerate(verbalizer.values()):
                n = len(tokenizer(cont, add_special_tokens=False)["input_ids"]) if variant["normalize"] == "mean" else 1
                assert abs(row[j] - hand_logprob(model, tokenizer, PROMPT.replace("{text}", text), cont) / n) < 1e-4
            if variant["hidden"]:  # then the last real token's final hidden state of the text alone
                ids = torch.tensor([tokenizer(text)["input_ids"][:64]])
                with torch.no_grad():
                    last = model.model(input_ids=ids).last_hidden_state[0, -1].numpy()
                np.testing.assert_allclose(row[len(verbalizer):], last, atol=1e-4)
    assert summary["prompt_probe"]["hidden"] == variant["hidden"] and summary["prompt_probe"]["prompt"] == PROMPT
    # The zero-shot reference: the raw scores' argmax on the test set.
    zero_shot = seen["features"]["test"][:, :2].argmax(1) == seen["labels"]["test"]
    assert summary["prompt_probe"]["zero_shot_test_accuracy"] == pytest.approx(zero_shot.mean())


def _refit(summary, seen):
    """scikit-learn's StandardScaler + LogisticRegression with the C that 5-fold CV over the whole budget
    prefers (the first best of the grid), fit on all 30 labeled examples: (pipeline, curve)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x = np.concatenate([seen["features"]["train"], seen["features"]["validation"]])
    y = np.concatenate([seen["labels"]["train"], seen["labels"]["validation"]])
    assert len(y) == 30 == summary["labels_used"]
    make = lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    curve = []
    for c in (0.01, 0.1, 1.0, 10.0):
        folds = StratifiedKFold(5, shuffle=True, random_state=0).split(x, y)
        curve.append(np.mean([make(c).fit(x[a], y[a]).score(x[b], y[b]) for a, b in folds]))
    best = (0.01, 0.1, 1.0, 10.0)[int(np.argmax(curve))]
    return make(best).fit(x, y), curve, best


def test_probe_is_logistic_regression_refit_with_the_cross_validated_c(prompt_run):
    _, workdir, summary, seen = prompt_run
    pipeline, curve, best = _refit(summary, seen)
    info = summary["prompt_probe"]
    assert info["best_C"] == best == summary["best_C"]
    np.testing.assert_allclose([r["accuracy"] for r in info["cv_curve"]], curve)
    names = summary["label_names"]
    expected = [names[i] for i in pipeline.predict(seen["features"]["test"])]
    rows = read_predictions(workdir)
    assert [r["predicted"] for r in rows] == expected
    assert summary["test_accuracy"] == pytest.approx(np.mean([r["predicted"] == r["label"] for r in rows]))


def test_saved_model_predicts_like_the_run_and_scores_new_texts_the_same_way(prompt_run, tmp_path, capsys):
    variant, workdir, summary, seen = prompt_run
    meta = json.loads((workdir / "model" / "classifier.json").read_text())
    assert meta["version"] == 2 and meta["kind"] == "probe"
    assert meta["prompt"]["prompt"] == PROMPT and meta["prompt"]["hidden"] == variant["hidden"]
    assert dict(zip(meta["prompt"]["labels"], meta["prompt"]["continuations"])) == variant["verbalizer"]
    clf = tljax.load_classifier(workdir / "model")
    rows = read_predictions(workdir)
    texts = [r["text"] for r in rows]
    assert clf.predict(texts) == [r["predicted"] for r in rows]
    proba = np.asarray([[float(r[f"prob_{n}"]) for n in clf.label_names] for r in rows])
    np.testing.assert_allclose(clf.predict_proba(texts), proba, atol=1e-6)  # the CSV keeps 8 digits
    # New texts through `tljax predict`: the refit probe on their independently checked features.
    new = seen["data"].train.texts
    with open(tmp_path / "new.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"]] + [[t] for t in new])
    assert cli_main(["predict", "--model", str(workdir / "model"), "--input", f"csv:{tmp_path / 'new.csv'}",
                     "--output", str(tmp_path / "out.csv")]) == 0
    pipeline, _, _ = _refit(summary, seen)
    with open(tmp_path / "out.csv", newline="") as f:
        predicted = [r["predicted"] for r in csv.DictReader(f)]
    assert predicted == [summary["label_names"][i] for i in pipeline.predict(seen["features"]["train"])]
    # No transformers model computes prompt scores + a probe: export refuses rather than write another model.
    from tljax import hf
    with pytest.raises(hf.HFError, match="prompt label scores"):
        hf.export_classifier_hf(clf, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_bad_starts_and_settings_fail_in_one_line_and_write_nothing(pretrained_run, tiny_llama, task, tmp_path,
                                                                     capsys):
    from pathlib import Path
    config_file = Path(__file__).parents[1] / "configs" / "finetune_classify.py"
    workdir = tmp_path / "run"
    good = {"neg": " little", "pos": " great"}

    def argv(start, verbalizer=good, **fields):
        fields = {"strategy": "features", "recipe": "prompt_probe", "prompt.prompt": PROMPT_TYPED,
                  "prompt.verbalizer": json.dumps(verbalizer), "data.name": "", "data.train": f"csv:{task}/train.csv",
                  "data.test": f"csv:{task}/test.csv", "data.num_labeled": 30, "mesh.shape": "(-1, 1, 1)",
                  "forgetting.enabled": False, **fields}
        return (["finetune", "--config", str(config_file), "--workdir", str(workdir), f"--config.init_from={start}"]
                + [f"--config.{k}={v}" for k, v in fields.items()])

    llama = f"hf:{tiny_llama[0]}"
    cases = [(argv(str(pretrained_run)), "is a BERT encoder; recipe=prompt_probe needs a causal LM"),
             (argv(llama, {"neg": " little", "other": " great"}),
              "label(s) ['pos'] of the task have no entry in prompt.verbalizer"),
             (argv(llama, strategy="full"), "use --config.strategy=features with it"),
             (argv(llama, **{"prompt.prompt": "no placeholder"}), "has no {text} placeholder"),
             (argv(llama, recipe=""), "prompt.prompt is set but recipe=''")]
    for args, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            cli_main(args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "\n" not in err and err.startswith("tljax: error:") and message in err, err
        assert not workdir.exists(), args


def test_experiment_method_uses_the_experiments_prompt_and_is_opt_in(tiny_llama, task, tmp_path, monkeypatch):
    from pathlib import Path
    from tljax import config as config_lib
    from tljax import experiment
    from tljax.config import ConfigError
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
    assert "smollm2_prompt_probe" in experiment.METHODS and "smollm2_prompt_probe" not in experiment.DEFAULT_METHODS
    c = config_lib.load_config_file(Path(__file__).parents[1] / "configs" / "experiments" / "learning_curve.py")
    c.methods, c.budgets, c.seeds, c.few_label_seeds = ("smollm2_prompt_probe",), (20,), (0,), ()
    c.smollm2.init_from = f"hf:{tiny_llama[0]}"
    c.prompt.update(verbalizer='{"neg": " little", "pos": " great"}', prompt=PROMPT_TYPED, batch_size=8)
    c.finetune.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv", max_len=16)
    out = experiment.run(c, tmp_path / "lc")
    (row,) = out["rows"]
    cell = tmp_path / "lc" / "cells" / "smollm2_prompt_probe" / "20_s0"
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["recipe"] == "prompt_probe" and summary["strategy"] == "features" and summary["labels_used"] == 20
    saved = json.loads((cell / "config.json").read_text())
    assert saved["prompt"]["prompt"] == PROMPT_TYPED and saved["prompt"]["batch_size"] == 8
    assert summary["prompt_probe"]["verbalizer"] == {"neg": " little", "pos": " great"}
    assert float(row["test_accuracy"]) == summary["test_accuracy"]
    # A prompt set in the finetune node would be overridden by the experiment's: refused.
    c.finetune.prompt = finetune.defaults.finetune_config().prompt
    c.finetune.prompt.prompt = "{text} ?"
    with pytest.raises(ConfigError, match="set --config.prompt"):
        experiment.run(c, tmp_path / "lc2")


def test_without_a_verbalizer_each_label_is_scored_as_its_name(tiny_llama, task, tmp_path, monkeypatch):
    """configs/finetune_fewshot.py:prompt_probe with no verbalizer: the labels' own names (" neg", " pos") are
    the continuations, in the summary and in the saved classifier."""
    from pathlib import Path
    from tljax import config as config_lib
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
    c = config_lib.load_config_file(Path(__file__).parents[1] / "configs" / "finetune_fewshot.py", "prompt_probe")
    assert c.recipe == "prompt_probe" and c.strategy == "features" and not c.prompt.verbalizer
    c.init_from = f"hf:{tiny_llama[0]}"
    c.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv", num_labeled=30, max_len=32)
    c.prompt.batch_size = 8
    c.mesh.shape = (1, 1, 1)
    summary = finetune.run(c, tmp_path / "run")
    assert summary["prompt_probe"]["verbalizer"] == {"neg": " neg", "pos": " pos"}
    meta = json.loads((tmp_path / "run" / "model" / "classifier.json").read_text())
    assert meta["prompt"]["continuations"] == [" neg", " pos"]
