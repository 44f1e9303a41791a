"""The engine: fine-tuning resumes exactly after SIGKILL, SIGTERM saves and resumes, divergence stops
without saving non-finite state, nothing is written before a run is validated, metric rows are unique
after resumes, and a custom regex parameter policy works end to end."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import tiny_pretrain_config, write_keyword_task
from tljax import engine, finetune, policy, pretrain
from tljax.checkpoint import read_params
from tljax.config import ConfigError

ROOT = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pretrained_run(text_corpus, tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("pretrained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLJAX_DATA_DIR", str(cache))
        mp.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
        pretrain.run(tiny_pretrain_config("mlm", "bert", text_corpus, steps=12), workdir)
    return workdir


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_keyword_task(tmp_path_factory.mktemp("task"), (("train", 200), ("test", 60)))


def finetune_args(run, task, workdir, *extra):
    return ["finetune", "--config", str(ROOT / "configs" / "finetune_classify.py"), "--workdir", str(workdir),
            f"--config.init_from={run}", "--config.data.name=", f"--config.data.train=csv:{task}/train.csv",
            f"--config.data.test=csv:{task}/test.csv", "--config.data.num_labeled=100",
            "--config.data.validation_fraction=0.4", "--config.data.max_len=16", "--config.data.batch_size=8",
            "--config.train.steps=150", "--config.train.eval_every=10", "--config.train.log_every=10",
            "--config.train.checkpoint_every=10", "--config.train.warmup_steps=5", "--config.train.lr=3e-3",
            "--config.mesh.shape=(1,1,1)", "--config.forgetting.enabled=False", *extra]


def tljax(args, cache, **kw):
    env = dict(os.environ, TLJAX_DATA_DIR=str(cache), XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tljax.cli", *args], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def committed_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def wait_for_checkpoint(proc, workdir: Path, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if committed_steps(workdir) or proc.poll() is not None:
            return
        time.sleep(0.005)


@pytest.mark.slow
def test_finetune_killed_after_a_checkpoint_resumes_to_the_same_result(pretrained_run, task, cache, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert tljax(finetune_args(pretrained_run, task, straight), cache).wait() == 0
    proc = tljax(finetune_args(pretrained_run, task, killed), cache)
    wait_for_checkpoint(proc, killed)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, out  # it was really killed mid-run
    assert not (killed / "summary.json").exists()
    assert committed_steps(killed)[-1] < 150
    rerun = tljax(finetune_args(pretrained_run, task, killed), cache)
    out = rerun.communicate()[0]
    assert rerun.returncode == 0, out
    assert "resumed from step" in out
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    assert b["steps_this_run"] < 150
    for key in ("test_accuracy", "test_macro_f1", "validation_curve", "best_step", "best_validation_accuracy"):
        assert a[key] == b[key], key
    rows = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(rows)) == sorted(set(json.loads(line)["step"] for line in
                                           (straight / "metrics.jsonl").read_text().splitlines()))


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_rerun_resumes(text_corpus, cache, tmp_path):
    config = tmp_path / "config.py"
    config.write_text("import sys\nsys.path.insert(0, %r)\nfrom conftest import tiny_pretrain_config\n"
                      "def get_config():\n    return tiny_pretrain_config('mlm', 'bert', %r, steps=3000, "
                      "checkpoint_every=100, log_every=10, eval_every=500)\n" % (str(ROOT / "tests"), str(text_corpus)))
    workdir = tmp_path / "run"
    args = ["pretrain", "--config", str(config), "--workdir", str(workdir)]
    proc = tljax(args, cache)
    wait_for_checkpoint(proc, workdir)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate()[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    line = [l for l in out.splitlines() if "stopped by SIGTERM" in l]
    assert len(line) == 1 and line[0].startswith("tljax: error:"), out
    stopped_at = int(line[0].split("at step ")[1].split(";")[0])
    assert committed_steps(workdir)[-1] == stopped_at  # the current step, not the last periodic one
    rows = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == stopped_at  # the interrupted window's row is written too
    rerun = tljax(args, cache)
    out = rerun.communicate()[0]
    assert rerun.returncode == 0, out
    assert f"resumed from step {stopped_at}" in out
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 3000 and summary["steps_this_run"] == 3000 - stopped_at
    assert summary["tokens_seen"] == 3000 * 8 * 32
    train_rows = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
                  if "train/loss" in l]
    assert len(train_rows) == len(set(train_rows))  # one row per logged step after the resume


def test_divergence_stops_without_saving_a_non_finite_checkpoint(text_corpus, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("TLJAX_DATA_DIR", str(cache))
    config = tiny_pretrain_config("mlm", "bert", text_corpus, steps=40, lr=1e4, warmup_steps=0)
    with pytest.raises(engine.Diverged, match=r"not finite at step \d+.*learning rate"):
        pretrain.run(config, tmp_path / "hot")
    steps = committed_steps(tmp_path / "hot")
    for step in steps:  # whatever was saved before the divergence is finite
        params, _ = read_params(tmp_path / "hot" / "checkpoints", step)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
    assert not (tmp_path / "hot" / "summary.json").exists()


def test_nothing_is_written_before_the_run_is_validated(text_corpus, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("TLJAX_DATA_DIR", str(cache))
    config = tiny_pretrain_config("mlm", "bert", text_corpus, steps=4)
    config.data.batch_size = 4096  # more than the eval text holds
    with pytest.raises(ConfigError, match="eval data"):
        pretrain.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    config.data.batch_size = 8  # the corrected command is accepted
    assert pretrain.run(config, tmp_path / "run")["steps"] == 4


def test_resumes_keep_one_metric_row_per_step_and_count_tokens(text_corpus, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("TLJAX_DATA_DIR", str(cache))
    config = lambda **kw: tiny_pretrain_config("mlm", "bert", text_corpus, steps=12, **kw)
    pretrain.run(config(run_steps=7), tmp_path)  # checkpoint at 6, then stops at 7 (saved)
    # An attempt that wrote rows past its last checkpoint and died: its rows must not stay.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 9, "train/loss": 1.0}) + "\n" + '{"step": 1')
    summary = pretrain.run(config(), tmp_path)
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if "train/loss" in l]
    assert steps == [3, 6, 7, 9, 12]
    assert summary["tokens_seen"] == 12 * 8 * 32
    again = pretrain.run(config(), tmp_path)  # a finished run, re-run: nothing to do, same numbers
    assert again["steps_this_run"] == 0
    assert again["final_train_loss"] == summary["final_train_loss"] is not None
    assert again["eval_loss"] == summary["eval_loss"]
    json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_custom_parameter_rules_end_to_end(pretrained_run, task, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("TLJAX_DATA_DIR", str(cache))
    from test_finetune import ft_config
    c = ft_config(pretrained_run, task, "full", param_rules=("encoder/embeddings/.*: frozen",
                                                             "encoder/layer_0/.*: lr=0.1, wd=0"))
    c.data.update(text_field="text", label_field="label")
    c.train.update(steps=20, checkpoint_every=20)
    summary = finetune.run(c, tmp_path)
    before, _ = read_params(pretrained_run / "checkpoints")
    after, _ = read_params(tmp_path / "checkpoints")
    emb = before["encoder"]["embeddings"]
    assert summary["frozen_params"] == sum(np.size(x) for x in jax.tree.leaves(emb))
    for path, leaf in jax.tree_util.tree_leaves_with_path(emb):  # frozen: bit-identical
        np.testing.assert_array_equal(leaf, _get(after["encoder"]["embeddings"], path))
    moved = lambda layer: np.abs(after["encoder"][layer]["mlp"]["intermediate"]["kernel"]
                                 - before["encoder"][layer]["mlp"]["intermediate"]["kernel"]).mean()
    assert 0 < moved("layer_0") < 0.3 * moved("layer_1")  # lr x 0.1 on layer 0


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_rules_parse_and_bad_rules_name_the_fix():
    r = policy.parse_rule("encoder/layer_[0-3]/.*: lr=0.1, wd=0, from=5", "g")
    assert r.plan == policy.GroupPlan(lr_scale=0.1, wd_scale=0.0, start_step=5) and r.pattern == "encoder/layer_[0-3]/.*"
    assert policy.parse_rule("classifier/.*: frozen", "g").plan.frozen
    for bad, message in (("no colon", "no 'REGEX:'"), ("a: lr=x", "not a number"), ("a: speed=2", "not one of"),
                         ("[: frozen", "bad regular expression"), ("a: from=1.5", "from=")):
        with pytest.raises(policy.PolicyError, match=message):
            policy.parse_rule(bad, "g")
    # First match wins: a user's rule before the preset's.
    params = {"encoder": {"embeddings": {"w": np.zeros(2)}, "layer_0": {"w": np.zeros(3)}}, "classifier": {"w": np.zeros(1)}}
    rules = policy.parse_rules(["layer_0/: frozen"]) + policy.strategy_rules("full", 1)
    labels, plans = policy.group_labels(params, rules)
    assert labels == {"encoder": {"embeddings": {"w": "embeddings"}, "layer_0": {"w": "rule_0"}},
                      "classifier": {"w": "head"}}
    assert policy.trainable_counts(params, labels, plans) == (3, 3)
