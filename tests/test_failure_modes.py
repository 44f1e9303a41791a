"""The failure-modes experiment: the grid of the shipped configs, a miniature grid end to end with resume,
and the measures read from a cell (negation subset, collapse to one class, loss curve) against hand-made
examples."""
import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import write_keyword_task, write_tiny_bert_config
from tljax import cli, experiment, failures, finetune, pretrain
from tljax import config as config_lib
from tljax.config import ConfigError

REPO = Path(__file__).parents[1]
CONFIG = REPO / "configs" / "experiments" / "failure_modes.py"


def test_negation_subset_on_hand_written_texts():
    negated = ["This is not a good film.", "No surprises here.", "I never laughed.", "It doesn't work.",
               "It doesn’t work either.", "NOT worth it", "You cannot look away."]
    plain = ["A notable debut.", "Nothing but joy.", "A knotty, noble plot.", "Snow on the mountains.",
             "The tonight show.", "Don Quixote rides again."]
    assert [failures.is_negation(t) for t in negated] == [True] * len(negated)
    assert [failures.is_negation(t) for t in plain] == [False] * len(plain)


def test_collapse_detection_by_hand():
    rows = [{"text": t, "label": lab, "predicted": p} for t, lab, p in [
        ("not bad", "pos", "neg"), ("great", "pos", "neg"), ("no fun", "neg", "neg"), ("dull", "neg", "neg"),
        ("fine", "pos", "neg"), ("never again", "neg", "pos"), ("ok", "pos", "neg"), ("bad", "neg", "neg")]]
    # 7 of 8 predictions are "neg": share 0.875; negated texts: "not bad" (wrong), "no fun" (right),
    # "never again" (wrong) -> 1 of 3.
    m = failures.prediction_measures(rows, collapse_share=0.95)
    assert m["majority_share"] == 7 / 8 and m["collapsed"] is False
    assert m["majority_class_accuracy"] == 0.5  # 4 pos, 4 neg
    assert m["negation_count"] == 3 and m["negation_accuracy"] == pytest.approx(1 / 3)
    assert failures.prediction_measures(rows, collapse_share=0.85)["collapsed"] is True
    assert failures.majority_share(["a", "b", "a", "a"]) == 0.75
    assert failures.majority_share([1, 1, 1]) == 1.0


def test_loss_curve_skips_a_torn_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "train/loss": 0.7}\n{"step": 20, "train/loss": 0.5}\n'
                                            '{"step": 30, "train/lo')
    assert failures.loss_curve(tmp_path) == [(10, 0.7), (20, 0.5)]
    assert failures.loss_curve(tmp_path / "missing") == []


def test_quick_and_full_grids():
    quick = config_lib.load_config_file(f"{CONFIG}:quick")
    full = config_lib.load_config_file(str(CONFIG))
    for c in (quick, full):
        failures.validate(c)
    parts = failures.part_cells(quick)
    # mismatch: variants x budgets; probes get one cell whatever the rates; shared cells run once.
    assert len(parts["mismatch"]) == len(quick.mismatch.variants) * len(quick.mismatch.budgets)
    probes = [v for v in quick.forgetting.variants if failures.VARIANTS[v].strategy == "features"]
    assert len(parts["forgetting"]) == (len(quick.forgetting.variants) - len(probes)) * len(quick.forgetting.lrs) + len(probes)
    grid = failures.grid(quick)
    assert len(grid) == len(set(grid)) < sum(len(cs) for cs in parts.values())
    assert {c.seed for c in failures.grid(full)} == {0, 1, 2}
    # The full sweep spans 1e-6 .. 1e-2 on MiniLM; every cell folder is distinct.
    sweep = failures.part_cells(full)["lr_sweep"]
    assert {c.lr for c in sweep} == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2}
    assert all(failures.VARIANTS[c.method].start == "minilm" for c in sweep)
    dirs = [c.dir(Path("w")) for c in failures.grid(full)]
    assert len(dirs) == len(set(dirs))


def test_language_part_fine_tunes_on_the_chinese_reviews():
    """The cross-language cells read the built-in Chinese set (not the experiment's task), skip the English
    forgetting measure, and scratch takes the Chinese-pretrained BERT's architecture and tokenizer."""
    full = config_lib.load_config_file(str(CONFIG))
    cells = failures.part_cells(full)["language"]
    assert {c.method for c in cells} == {"scratch_zh", "bert_ood_zh", "bert_zh", "minilm_zh"}
    assert {"bert_zh", "bert_ood", "minilm"} <= failures.needed_starts(full)
    starts = {name: {"init_from": f"runs/{name}"} for name in ("bert_ood", "bert_zh", "minilm")}
    by_method = {c.method: failures.cell_config(full, c, starts, 9956) for c in cells if c.seed == 0 and c.budget == 100}
    for method, cfg in by_method.items():
        assert (cfg.data.name, cfg.data.train, cfg.data.test, cfg.forgetting.enabled) == ("chinese_reviews", "", "", False)
        assert cfg.data.num_labeled == 100
    assert (by_method["scratch_zh"].init_from, by_method["scratch_zh"].model_like) == ("none", "runs/bert_zh")
    assert by_method["bert_ood_zh"].init_from == "runs/bert_ood" and by_method["minilm_zh"].train.lr == 5e-5
    # The experiment's own cells keep its task.
    mismatch = failures.cell_config(full, failures.part_cells(full)["mismatch"][0], {**starts, "scratch": {}}, 9956)
    assert mismatch.data.name == full.finetune.data.name and mismatch.forgetting.enabled
    full.language.budgets = (100, 0)
    with pytest.raises(ConfigError, match="budget 0"):
        failures.validate(full)


def test_chinese_training_text_never_holds_a_test_text(monkeypatch):
    from tljax.data import prepared, sources
    splits = {"train": (["a", "b", "shared"], None), "test": (["shared", "c"], None)}
    monkeypatch.setattr(prepared, "load_builtin_split", lambda dataset, split: splits[split])
    assert list(sources.iter_documents("builtin:chinese_reviews_train_text")) == ["a", "b"]
    assert experiment.tapt_source({"name": "chinese_reviews"}) == "builtin:chinese_reviews_train_text"


@pytest.mark.parametrize("flag, message", [
    ("--config.parts=('mismatch','nope')", "parts ['nope'] unknown"),
    ("--config.lr_sweep.lrs=(0.001,-1.0)", "lr_sweep.lrs=(0.001, -1.0) must be learning rates > 0"),
    ("--config.experiment=failure_mode", "experiment='failure_mode' unknown; choose one of"),
    ("--config.finetune.data.validation=csv:x.csv", "validation carved out of it"),
])
def test_cli_rejects_bad_config_in_one_line(flag, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tljax.cli", "experiment", "--config", f"{CONFIG}:quick",
                           "--workdir", str(tmp_path / "x"), flag], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not (tmp_path / "x").exists()


def test_experiment_dispatch(monkeypatch):
    lc = config_lib.load_config_file(str(REPO / "configs" / "experiments" / "learning_curve.py:quick"))
    assert "experiment" not in lc  # the learning-curve configs name no experiment: the default
    called = []
    monkeypatch.setattr(experiment, "run", lambda c, w: called.append("learning_curve"))
    monkeypatch.setattr(failures, "run", lambda c, w: called.append("failure_modes"))
    cli.run_experiment(lc, "w")
    cli.run_experiment(config_lib.load_config_file(f"{CONFIG}:quick"), "w")
    assert called == ["learning_curve", "failure_modes"]
    lc.experiment = "other"
    with pytest.raises(ConfigError, match="unknown"):
        cli.run_experiment(lc, "w")


def mini_config(task, text_corpus, tmp_path):
    """Three parts on the CSV task with a 2-layer 32-wide BERT and GPT pretrained here in seconds."""
    bert_file = write_tiny_bert_config(tmp_path / "tiny_bert.py", text_corpus)
    gpt_file = tmp_path / "tiny_gpt.py"
    gpt_file.write_text(textwrap.dedent("""
        from tljax.defaults import pretrain_config
        def get_config(arg=None):
            c = pretrain_config("clm", "gpt")
            c.data.tokenizer.kind = "bpe"
            c.train.update(log_every=4, eval_batches=2)
            c.mesh.shape = (1, 1, 1)
            return c
    """))
    c = config_lib.load_config_file(f"{CONFIG}:quick")
    c.parts = ("mismatch", "lr_sweep", "features")
    c.mismatch.update(variants=("scratch", "bert_ood", "bert_indomain"), budgets=(20,))
    c.lr_sweep.update(variants=("bert_ood",), budget=20, lrs=(3e-3, 1.0))
    c.features.update(variants=("bert_features", "gpt_features"), budgets=(20,))
    c.tljax.update(pretrain_config=str(bert_file), pretrain_steps=0)
    c.gpt.pretrain_config = str(gpt_file)
    c.indomain.holdout = 0.3
    c.finetune.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv",
                           validation_fraction=0.25, max_len=16, batch_size=8)
    c.finetune.train.update(steps=12, eval_every=6, log_every=3, warmup_steps=2)
    c.finetune.forgetting.update(sequences=8, batch_size=8)
    c.lr.update(scratch=3e-3, bert_ood=3e-3, bert_indomain=3e-3)
    return c


@pytest.mark.usefixtures("one_device")
def test_mini_grid_end_to_end_and_resume(text_corpus, tmp_path, monkeypatch):
    task = write_keyword_task(tmp_path, seed=2)
    config = mini_config(task, text_corpus, tmp_path)
    workdir = tmp_path / "fm"
    result = failures.run(config, workdir)

    with open(workdir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # bert_ood at 3e-3 and 20 labels is asked for by two parts and runs once.
    assert len(rows) == len(failures.grid(config)) == 6
    shared = next(r for r in rows if r["method"] == "bert_ood" and r["lr"] == "0.003")
    assert shared["parts"] == "mismatch;lr_sweep"
    for r in rows:
        assert r["diverged"] == "True" or 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert int(r["num_labeled"]) == 20 and int(r["negation_count"]) > 0  # "not" is a filler word
    # The in-domain BERT read the task's training texts only, for the BERT's steps.
    indomain = json.loads((workdir / "pretrain_indomain" / "config.json").read_text())
    assert indomain["data"]["source"] == f"csv:{task}/train.csv@text"
    assert indomain["train"]["steps"] == json.loads((workdir / "pretrain" / "config.json").read_text())["train"]["steps"]
    # The GPT took the BERT's size (match_bert).
    gpt = json.loads((workdir / "pretrain_gpt" / "config.json").read_text())
    assert (gpt["objective"], gpt["model"]["hidden_size"], gpt["model"]["num_layers"]) == ("clm", 32, 2)
    md = (workdir / "results.md").read_text()
    assert "budget = all labels, validation carved out of it" in md and "## lr_sweep" in md
    for name in ("mismatch", "lr_sweep", "features"):
        assert (workdir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert set(result["readings"]) == set(config.parts)
    assert failures.loss_curve(next(c for c in failures.grid(config) if c.lr == 3e-3 and c.method == "bert_ood")
                               .dir(workdir))

    # The results rebuild from results.csv alone (a grid run in slices is merged this way); a cell in two
    # files is refused.
    import importlib.util
    spec = importlib.util.spec_from_file_location("experiment_report", REPO / "scripts" / "experiment_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config_file = tmp_path / "mini_config.py"
    config_file.write_text(f"import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({config.to_dict()!r})\n")
    assert script.main(["--config", str(config_file), "--out", str(tmp_path / "rebuilt"), str(workdir / "results.csv")]) == 0
    rebuilt = (tmp_path / "rebuilt" / "results.md").read_text()
    assert rebuilt == md[:md.index("## Starting points")]
    assert (tmp_path / "rebuilt" / "results.csv").read_text() == (workdir / "results.csv").read_text()
    with pytest.raises(ConfigError, match="is in both"):
        failures.report(config, [workdir / "results.csv"] * 2, tmp_path / "twice")

    # A second run does no work: no cell trains, no start is pretrained again.
    calls = []
    real_pretrain = pretrain.run
    monkeypatch.setattr(finetune, "run", lambda *a, **k: calls.append("finetune"))
    monkeypatch.setattr(pretrain, "run", lambda cfg, d, **k: (calls.append("pretrain-step")
                                                              if not (Path(d) / "summary.json").exists() else None)
                        or real_pretrain(cfg, d, **k))
    again = failures.run(config, workdir)
    assert "finetune" not in calls and "pretrain-step" not in calls
    assert [r["test_accuracy"] for r in again["rows"]] == [r["test_accuracy"] for r in result["rows"]]

    # A changed setting of a finished cell is refused, naming the field.
    config.finetune.head_dropout = 0.2
    with pytest.raises(ConfigError, match="head_dropout"):
        failures.run(config, workdir)


def test_collapsed_rate_is_never_the_best():
    """A collapsed cell scores the majority share (here above the working rates); the reading names the
    best working rate and where the collapse starts."""
    def row(lr, acc, f1, collapsed):
        return {"method": "bert_ood", "labels": "1000", "lr": lr, "seed": 0, "test_accuracy": acc,
                "test_macro_f1": f1, "collapsed": collapsed, "diverged": False}
    rows = [row(1e-4, 0.55, 0.55, False), row(1e-3, 0.58, 0.58, False), row(3e-2, 0.60, 0.37, True)]
    line, = failures.reading("lr_sweep", rows)
    assert "best lr 0.001 (0.580)" in line and "from lr 0.03" in line and "macro-F1 0.370" in line


@pytest.mark.usefixtures("one_device")
def test_diverged_cell_is_a_result_and_is_not_rerun(tmp_path, monkeypatch):
    """A rate that makes the loss non-finite is recorded (diverged, no accuracy), plotted and read, and a
    re-run skips it; fine-tuning is replaced by a stand-in that writes what a cell writes."""
    from tljax import engine
    task = write_keyword_task(tmp_path, seed=3)
    config = config_lib.load_config_file(f"{CONFIG}:quick")
    config.parts = ("lr_sweep",)
    config.lr_sweep.update(variants=("minilm",), budget=20, lrs=(1e-4, 1.0))
    config.finetune.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv")
    with open(task / "test.csv", newline="") as f:
        test = list(csv.DictReader(f))
    calls = []

    def stand_in(cfg, cell_dir, **kw):
        calls.append(cfg.train.lr)
        cell_dir.mkdir(parents=True)
        config_lib.save_config(cfg, cell_dir)
        (cell_dir / "metrics.jsonl").write_text('{"step": 1, "train/loss": 0.7}\n')
        if cfg.train.lr == 1.0:
            raise engine.Diverged("loss is nan at step 2")
        with open(cell_dir / "predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "predicted"])
            w.writerows([r["text"], r["label"], r["label"]] for r in test)  # a perfect classifier
        summary = {"test_accuracy": 1.0, "test_macro_f1": 1.0, "num_labeled": 20, "labels_used": 20,
                   "trainable_params": 1, "wall_seconds": 0.1, "forgetting": None}
        (cell_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(finetune, "run", stand_in)
    result = failures.run(config, tmp_path / "fm")
    assert calls == [1e-4, 1.0]
    by_lr = {r["lr"]: r for r in result["rows"]}
    assert by_lr[1.0]["diverged"] is True and by_lr[1.0]["test_accuracy"] == ""
    assert by_lr[1e-4]["collapsed"] is False and by_lr[1e-4]["negation_accuracy"] == 1.0
    line, = result["readings"]["lr_sweep"]
    assert "best lr 0.0001 (1.000)" in line and "from lr 1" in line
    assert (tmp_path / "fm" / "lr_sweep.png").exists()
    failures.run(config, tmp_path / "fm")
    assert calls == [1e-4, 1.0]  # both cells finished: nothing runs again
