"""The learning-curve experiment: a miniature grid end to end (starts made by the experiment, resume after
an interrupted cell, outputs), and the claims computed from hand-made rows."""
import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import write_keyword_task, write_tiny_bert_config
from tljax import config as config_lib
from tljax import experiment, finetune
from tljax.config import ConfigError
from tljax.data import prepared, sources

REPO = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A CSV task whose label is carried by one word ("great" vs "little") among filler words."""
    return write_keyword_task(tmp_path_factory.mktemp("task"), seed=1)


def mini_config(task, text_corpus, tmp_path):
    """Four methods × 2 budgets × 2 seeds on the CSV task; the tljax and word2vec starts are made by the
    experiment from config files written here (a 2-layer 32-wide BERT, 1-epoch word2vec)."""
    pretrain_file = write_tiny_bert_config(tmp_path / "tiny_bert.py", text_corpus)
    w2v_file = tmp_path / "tiny_w2v.py"
    w2v_file.write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("w2v", "{REPO / 'configs' / 'word2vec.py'}")
        module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
        def get_config(arg=None):
            c = module.get_config()
            c.data.source = "text:{text_corpus}/*.txt"
            c.dim, c.min_count, c.table_size, c.steps_per_call = 16, 2, 10000, 16
            return c
    """))
    c = config_lib.load_config_file(REPO / "configs" / "experiments" / "learning_curve.py")
    c.methods = ("scratch", "word2vec", "tljax_features", "tljax_light")
    c.budgets, c.seeds, c.few_label_seeds = (20, 0), (0, 1), ()
    c.tljax.pretrain_config, c.word2vec.config, c.word2vec.epochs = str(pretrain_file), str(w2v_file), 1
    c.finetune.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv",
                           validation_fraction=0.25, max_len=16, batch_size=8)
    c.finetune.train.update(steps=12, eval_every=6, log_every=6, warmup_steps=2, lr=3e-3)
    c.finetune.forgetting.update(sequences=8, batch_size=8)
    c.lr.update(scratch=3e-3, tljax=3e-3)
    return c


def test_grid_end_to_end_with_resume(task, text_corpus, tmp_path, monkeypatch):
    config = mini_config(task, text_corpus, tmp_path)
    workdir = tmp_path / "lc"
    real_run, calls = finetune.run, []

    def interrupted_on_sixth(cfg, cell_dir, **kw):
        calls.append(Path(cell_dir))
        if len(calls) == 6:
            (Path(cell_dir) / "partial").parent.mkdir(parents=True, exist_ok=True)
            (Path(cell_dir) / "partial").write_text("a cell killed half-way leaves files behind")
            raise KeyboardInterrupt
        return real_run(cfg, cell_dir, **kw)

    monkeypatch.setattr(finetune, "run", interrupted_on_sixth)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(config, workdir)
    with open(workdir / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 5  # every finished cell is on disk before the crash
    assert (workdir / "pretrain" / "summary.json").exists() and (workdir / "word2vec" / "vectors.npz").exists()

    calls.clear()
    monkeypatch.setattr(finetune, "run", lambda cfg, d, **kw: calls.append(Path(d)) or real_run(cfg, d, **kw))
    result = experiment.run(config, workdir)
    assert len(calls) == 16 - 5  # finished cells are skipped; the interrupted one starts over
    assert not any((d / "partial").exists() for d in calls)

    with open(workdir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and set(rows[0]) == set(experiment.CSV_FIELDS)
    assert {(r["method"], r["labels"], r["seed"]) for r in rows} == {
        (m, b, s) for m in config.methods for b in ("20", "all") for s in ("0", "1")}
    for r in rows:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        summary = json.loads((workdir / "cells" / r["method"] / f"{r['labels']}_s{r['seed']}" / "summary.json").read_text())
        assert float(r["test_accuracy"]) == summary["test_accuracy"]
        assert int(r["num_labeled"]) == (20 if r["labels"] == "20" else 120)  # the budget, validation included
    # Forgetting exists exactly where a pretrained LM head is fine-tuned.
    assert {r["method"] for r in rows if r["forgetting"] != ""} == {"tljax_light"}
    # Budget-scaled steps: 20 labels, batch 8, 20 epochs = 50 > 12 → capped at finetune.train.steps.
    assert {r["steps"] for r in rows} == {"12"}

    md = (workdir / "results.md").read_text()
    assert "| scratch (no pretraining) |" in md and " ± " in md and "all (120)" in md
    assert (workdir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    claims = json.loads((workdir / "claims.json").read_text())
    assert claims == result["claims"] and claims["better_predictions"]["labels"] == "20"
    costs = json.loads((workdir / "pretraining_costs.json").read_text())
    assert costs["tljax"] > 0 and costs["word2vec"] > 0

    # A grid run in slices (here: one file per seed) is rebuilt from its results.csv files alone; a cell in
    # two files is refused.
    for seed in ("0", "1"):
        experiment.write_csv([r for r in rows if r["seed"] == seed], tmp_path / f"seed{seed}.csv")
    config_file = tmp_path / "lc_config.py"
    config_file.write_text(f"import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({config.to_dict()!r})\n")
    script = [sys.executable, str(REPO / "scripts" / "experiment_report.py"), "--config", str(config_file)]
    done = subprocess.run(script + ["--out", str(tmp_path / "rebuilt"), str(tmp_path / "seed0.csv"),
                                    str(tmp_path / "seed1.csv")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rebuilt = json.loads((tmp_path / "rebuilt" / "claims.json").read_text())
    assert rebuilt == dict(claims, pretraining_seconds={})
    cut = md.index("**Starting points**")
    assert (tmp_path / "rebuilt" / "results.md").read_text()[:cut] == md[:cut]
    done = subprocess.run(script + ["--out", str(tmp_path / "twice"), str(tmp_path / "seed0.csv"),
                                    str(tmp_path / "seed0.csv")], capture_output=True, text=True)
    assert done.returncode == 2 and "is in both" in done.stderr and not (tmp_path / "twice").exists()

    # A moved workdir, named by another path, resumes: its starts are the same folders below it.
    moved = tmp_path / "elsewhere" / "lc_moved"
    moved.parent.mkdir()
    workdir.rename(moved)
    calls.clear()
    experiment.run(config, moved.absolute())
    assert calls == []

    # Re-running with a setting that changes a finished cell refuses, naming the field.
    config.finetune.train.lr = 1e-3
    config.lr.tljax = 1e-3
    with pytest.raises(ConfigError, match="train.lr"):
        experiment.run(config, moved)


def _rows(table):
    """Rows from {(method, labels): [(accuracy, seconds) per seed]}; 'all' means 1,000 labels."""
    return [{"method": m, "labels": b, "num_labeled": 1000 if b == "all" else int(b), "seed": s,
             "test_accuracy": acc, "test_macro_f1": acc, "forgetting": "", "wall_seconds": sec,
             "trainable_params": 1, "best_step": 1, "steps": 1}
            for (m, b), runs in table.items() for s, (acc, sec) in enumerate(runs)]


def test_claims_by_hand():
    rows = _rows({
        ("scratch", "10"): [(0.50, 10), (0.60, 12)], ("scratch", "100"): [(0.70, 20), (0.70, 20)],
        ("scratch", "all"): [(0.80, 100), (0.78, 120)],
        ("tljax_full", "10"): [(0.75, 5), (0.77, 7)], ("tljax_full", "100"): [(0.82, 8), (0.82, 8)],
        ("tljax_full", "all"): [(0.85, 40), (0.85, 40)],
        ("minilm_features", "10"): [(0.70, 1), (0.70, 1)], ("minilm_features", "100"): [(0.79, 2), (0.81, 2)],
        ("minilm_features", "all"): [(0.82, 3), (0.82, 3)],
    })
    claims = experiment.answer_claims(rows, {"tljax": {"wall_seconds": 300.0}})
    assert claims["better_predictions"] == {"labels": "10", "scratch": pytest.approx(0.55),
                                            "best_method": "tljax_full", "best": pytest.approx(0.76)}
    # Scratch with all 1,000 labels: 0.79. At 100 labels both transfer methods reach it; the more accurate
    # one (0.82 > 0.80) is named; 10× fewer labels.
    sd = claims["smaller_datasets"]
    assert (sd["labels"], sd["method"]) == ("100", "tljax_full") and sd["label_ratio"] == pytest.approx(10.0)
    assert sd["scratch_accuracy"] == pytest.approx(0.79)
    # Best scratch accuracy 0.79 takes scratch 110 s; the fastest transfer cell reaching it: minilm 100 (2 s).
    lt = claims["less_training_time"]
    assert (lt["method"], lt["labels"], lt["seconds"]) == ("minilm_features", "100", pytest.approx(2.0))
    assert lt["speedup"] == pytest.approx(55.0)
    assert claims["pretraining_seconds"] == {"tljax": 300.0}
    text = experiment.claims_text(claims)
    assert "10× fewer" in text and "55.0× faster" in text


def test_claims_when_transfer_never_catches_up():
    rows = _rows({("scratch", "10"): [(0.6, 5)], ("scratch", "all"): [(0.9, 50)],
                  ("word2vec", "10"): [(0.55, 1)], ("word2vec", "all"): [(0.7, 2)]})
    claims = experiment.answer_claims(rows, {})
    assert "labels" not in claims["smaller_datasets"] and "method" not in claims["less_training_time"]
    assert "no transfer method reaches scratch's 0.900" in experiment.claims_text(claims)


@pytest.mark.parametrize("flag, message", [
    ("--config.methods=('scratch','bogus')", "methods ['bogus'] unknown"),
    ("--config.budgets=(100,100)", "budgets=(100, 100) must be distinct"),
])
def test_cli_rejects_bad_grid(flag, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tljax.cli", "experiment", "--config",
                           str(REPO / "configs" / "experiments" / "learning_curve.py:quick"),
                           "--workdir", str(tmp_path / "x"), flag], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr


def test_claims_of_a_grid_in_progress():
    # Transfer results at 10 labels but scratch not yet run there: the claims use the budgets both have.
    rows = _rows({("word2vec", "10"): [(0.55, 1)], ("scratch", "100"): [(0.6, 5)], ("word2vec", "100"): [(0.7, 2)]})
    claims = experiment.answer_claims(rows, {})
    assert claims["better_predictions"]["labels"] == "100"
    assert experiment.answer_claims(_rows({("word2vec", "10"): [(0.55, 1)]}), {})["note"].startswith("the claims need")


@pytest.mark.slow  # ~1-4 minutes on 2 shared cores: a Llama pretraining run plus six cells
def test_decoder_methods_on_a_tiny_llama(task, text_corpus, tmp_path, monkeypatch):
    """SmolLM2's methods (features, LoRA, prompting) run as cells on any causal LM: here a tiny Llama
    pretrained for a few steps. Zero-shot prompting uses no label: one result, copied to every budget."""
    from conftest import tiny_pretrain_config
    from tljax import pretrain, zeroshot
    llama = tmp_path / "llama"
    p = tiny_pretrain_config("clm", "llama", text_corpus, steps=8)
    p.model.update(num_heads=4, num_kv_heads=2, mlp_dim=64, activation="silu", layer_norm_eps=1e-5,
                   use_pooler=False, dropout=0.0, attention_dropout=0.0)
    pretrain.run(p, llama)
    c = config_lib.load_config_file(REPO / "configs" / "experiments" / "learning_curve.py")
    assert not set(experiment.DECODER_METHODS) & set(
        config_lib.load_config_file(REPO / "configs" / "experiments" / "learning_curve.py", "quick").methods)
    c.methods = ("smollm2_last", "smollm2_lora", "smollm2_prompt")
    c.budgets, c.seeds, c.few_label_seeds = (20, 0), (0,), ()
    c.smollm2.init_from = str(llama)
    c.prompt.update(verbalizer='{"neg": " little", "pos": " great"}', prompt="{text} .")
    c.finetune.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv",
                           validation_fraction=0.2, max_len=16, batch_size=8)
    c.finetune.train.update(steps=12, eval_every=6, log_every=6, warmup_steps=2)
    c.finetune.forgetting.update(sequences=8, batch_size=8)
    c.lr.smollm2 = 1e-2
    scored = []
    real_zeroshot = zeroshot.run
    monkeypatch.setattr(zeroshot, "run", lambda *a, **k: scored.append(a[3]) or real_zeroshot(*a, **k))
    out = experiment.run(c, tmp_path / "lc")
    rows = {(r["method"], r["labels"]): r for r in out["rows"]}
    assert len(rows) == 6 and len(scored) == 1  # the zero-shot cell was scored once
    assert rows[("smollm2_prompt", "20")]["test_accuracy"] == rows[("smollm2_prompt", "all")]["test_accuracy"]
    assert rows[("smollm2_prompt", "20")]["trainable_params"] == 0
    lora_summary = json.loads((tmp_path / "lc/cells/smollm2_lora/20_s0/summary.json").read_text())
    assert lora_summary["strategy"] == "lora" and lora_summary["lora"]["adapter_params"] > 0
    assert lora_summary["trainable_params"] == lora_summary["lora"]["adapter_params"] + 2 * 32 + 2  # + the head
    assert lora_summary["frozen_params"] > lora_summary["trainable_params"]
    assert json.loads((tmp_path / "lc/cells/smollm2_last/20_s0/summary.json").read_text())["pooling"] == "last"
    for r in rows.values():
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
    # resume: every cell finished, nothing runs again
    monkeypatch.setattr(finetune, "run", lambda *a, **k: pytest.fail("a finished cell ran again"))
    again = experiment.run(c, tmp_path / "lc")
    assert len(again["rows"]) == 6 and len(scored) == 1


def test_task_adaptive_methods_pretrain_on_training_texts_only(task, text_corpus, tmp_path, monkeypatch):
    """tljax_tapt: the experiment's tljax start trained further with MLM on the task's training texts (made
    once), then full fine-tuning; the adaptation source is the training file's text column, not the test's."""
    assert "tljax_tapt" not in experiment.DEFAULT_METHODS and "minilm_tapt" not in experiment.DEFAULT_METHODS
    config = mini_config(task, text_corpus, tmp_path)
    tapt_file = tmp_path / "tiny_tapt.py"
    tapt_file.write_text(textwrap.dedent("""
        from tljax.defaults import pretrain_config
        def get_config(arg=None):
            c = pretrain_config("mlm", "bert")
            c.init_from = "hf:minilm"  # replaced by the experiment's start
            c.data.update(holdout=0.2, seq_len=32, batch_size=4)
            c.train.update(steps=4, warmup_steps=1, lr=1e-3, log_every=2, eval_every=4, checkpoint_every=4,
                           eval_batches=1)
            c.mesh.shape = (1, 1, 1)
            return c
    """))
    config.methods, config.budgets, config.seeds = ("tljax_tapt",), (20,), (0,)
    config.few_label_seeds = ()
    config.tapt.config = str(tapt_file)
    source = experiment.tapt_source(config.finetune.data)
    assert source == f"csv:{task}/train.csv@text"
    with open(task / "test.csv", newline="") as f:
        test_texts = {row["text"] for row in csv.DictReader(f)}
    docs = list(sources.iter_documents(source))
    assert len(docs) == 120 and not set(docs) & test_texts

    experiment.run(config, tmp_path / "lc")
    adapted = json.loads((tmp_path / "lc" / "tljax_tapt" / "config.json").read_text())
    assert adapted["init_from"] == str(tmp_path / "lc" / "pretrain") and adapted["data"]["source"] == source
    summary = json.loads((tmp_path / "lc" / "tljax_tapt" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["lm_head"] == "reused"
    cell = json.loads((tmp_path / "lc" / "cells" / "tljax_tapt" / "20_s0" / "config.json").read_text())
    assert cell["init_from"] == str(tmp_path / "lc" / "tljax_tapt") and cell["strategy"] == "full"
    costs = json.loads((tmp_path / "lc" / "pretraining_costs.json").read_text())
    assert costs["tljax_tapt"] > 0


def test_rotten_tomatoes_tapt_source_has_no_test_text(tmp_path, monkeypatch):
    """The built-in task's adaptation source: training reviews + plot synopses, never a test review (even one
    that also occurs in the training split, or among the plots)."""
    monkeypatch.setenv("TLJAX_DATA_DIR", str(tmp_path))
    rt = tmp_path / "rotten_tomatoes"
    rt.mkdir()
    splits = {"train": ["good film", "same text"], "validation": ["a validation review"],
              "test": ["a test review", "same text"]}
    for name, texts in splits.items():
        (rt / f"{name}.jsonl").write_text("".join(json.dumps({"text": t, "label": 0, "movie": "m"}) + "\n"
                                                  for t in texts))
    (rt / "manifest.json").write_text(json.dumps({"version": prepared.RT_PREP_VERSION}))
    (tmp_path / "corpus").mkdir()
    plots = [{"text": "a plot", "source": "rt_plots"}, {"text": "a test review", "source": "rt_plots"}]
    for name in ("train", "eval"):
        (tmp_path / "corpus" / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in plots))
    (tmp_path / "corpus" / "manifest.json").write_text("{}")
    data = config_lib.load_config_file(REPO / "configs" / "experiments" / "learning_curve.py").finetune.data
    source = experiment.tapt_source(data)
    assert source == "builtin:rotten_tomatoes_train_text"
    docs = list(sources.iter_documents(source))
    assert docs == ["good film", "a plot"] and not set(docs) & set(prepared.load_rt_split("test")[0])


def test_few_label_budgets_run_more_seeds():
    """The full grid runs 5 seeds at 100 and 300 labels (the spread there is the finding) and 3 elsewhere;
    :quick runs one seed everywhere; repeated seeds are refused."""
    full = config_lib.load_config_file(REPO / "configs" / "experiments" / "learning_curve.py")
    assert [experiment.seeds_of(full, b) for b in (100, 300, 1000, 3000, 0)] == \
        [(0, 1, 2, 3, 4)] * 2 + [(0, 1, 2)] * 3
    quick = config_lib.load_config_file(REPO / "configs" / "experiments" / "learning_curve.py", "quick")
    assert {experiment.seeds_of(quick, b) for b in quick.budgets} == {(0,)}
    full.few_label_seeds = (0, 0, 1)
    with pytest.raises(config_lib.ConfigError, match="few_label_seeds"):
        experiment.validate(full)
