"""End-to-end pretraining runs on a tiny model: outputs, learning, resume equivalence, refusals, CLI errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from tljax import pretrain
from tljax.checkpoint import Checkpoints
from tljax.config import ConfigError
from conftest import tiny_pretrain_config as tiny


def read_metrics(workdir):
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


@pytest.mark.parametrize("objective,kind", [("mlm", "bert"), ("clm", "gpt")])
def test_run_writes_outputs_and_learns(objective, kind, text_corpus, tmp_path):
    summary = pretrain.run(tiny(objective, kind, text_corpus, steps=30), tmp_path)
    for name in ("config.json", "summary.json", "metrics.jsonl", "tokenizer/tokenizer.json"):
        assert (tmp_path / name).exists(), name
    assert any((tmp_path / "tensorboard").iterdir())
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer")).mask_token_id == (4 if kind == "bert" else None)
    assert Checkpoints(tmp_path / "checkpoints").latest_step() == 30
    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if "train/loss" in r]
    assert {"train/accuracy", "train/learning_rate", "train/grad_norm", "train/tokens_per_second"} <= set(train_rows[0])
    assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"] - 0.5
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["steps"] == 30 and saved["tokens_seen"] == 30 * 8 * 32
    np.testing.assert_allclose(saved["eval_perplexity"], np.exp(saved["eval_loss"]), rtol=1e-6)
    assert summary["eval_loss"] < np.log(300)  # far below a uniform guess over the vocabulary


def test_resume_is_bit_identical_to_an_uninterrupted_run(text_corpus, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain.run(tiny("mlm", "bert", text_corpus), straight)
    pretrain.run(tiny("mlm", "bert", text_corpus, run_steps=6), resumed)  # "interrupted" at step 6
    assert Checkpoints(resumed / "checkpoints").latest_step() == 6
    pretrain.run(tiny("mlm", "bert", text_corpus), resumed)
    loss = lambda w: [(r["step"], r["train/loss"]) for r in read_metrics(w) if "train/loss" in r]
    assert loss(straight) == loss(resumed)
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((resumed / "summary.json").read_text())
    assert a["eval_loss"] == b["eval_loss"] and b["steps_this_run"] == 6


def test_resume_refuses_a_different_model(text_corpus, tmp_path):
    pretrain.run(tiny("mlm", "bert", text_corpus, steps=3), tmp_path)
    before = (tmp_path / "config.json").read_text()
    changed = tiny("mlm", "bert", text_corpus, steps=3)
    changed.model.num_layers = 3
    with pytest.raises(ConfigError, match=r"model.num_layers: 2 -> 3"):
        pretrain.run(changed, tmp_path)
    assert (tmp_path / "config.json").read_text() == before


def test_objective_and_model_must_agree(text_corpus, tmp_path):
    with pytest.raises(ConfigError, match="needs model.kind=gpt"):
        pretrain.run(tiny("clm", "bert", text_corpus), tmp_path)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tljax.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    r = cli("pretrain", "--config", "configs/bert_mlm_tiny.py", "--workdir", str(tmp_path), "--config.train.stepz=3")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "tljax: error: unknown config field '--config.train.stepz' (did you mean '--config.train.steps'?); "
        "'tljax pretrain --help' lists the valid fields"]
    r = cli("pretrain", "--config", "configs/bert_mlm_tiny.py", "--workdir", str(tmp_path),
            "--config.data.source=text:/nonexistent/*.txt", "--config.data.tokenizer.path=")
    assert r.returncode == 2 and "no file matches '/nonexistent/*.txt'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("pretrain", "--config", "configs/bert_mlm_tiny.py")
    assert r.returncode == 2 and "--workdir is required" in r.stderr
    r = cli("frobnicate")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr


def test_cli_main_from_python_applies_overrides(tmp_path, monkeypatch):
    from tljax import cli
    seen = {}
    monkeypatch.setattr(pretrain, "run", lambda config, workdir, given=(): seen.update(
        steps=config.train.steps, workdir=workdir, given=given))
    monkeypatch.setattr("sys.argv", ["pytest"])  # unlike a console-script call, sys.argv is not this argv
    cli.main(["pretrain", "--config", "configs/bert_mlm_tiny.py", "--workdir", str(tmp_path),
              "--config.train.steps=7"])
    # given: the fields set on the command line (continued pretraining checks them against its source)
    assert seen == {"steps": 7, "workdir": str(tmp_path), "given": ("train.steps",)}
