"""End-to-end fine-tuning from a tiny pretraining run on a user CSV file, with every strategy."""
import json

import numpy as np
import pytest

from conftest import write_keyword_task
from tljax import finetune
from tljax.config import ConfigError, load_config_file
from tljax.pretrained import PretrainedError

import pathlib

# The shipped config file is what users run: the tests start from it too.
CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


@pytest.fixture(scope="module")
def csv_task(tmp_path_factory):
    """A sentiment-like task: label "pos" texts contain "great", "neg" texts contain "little"."""
    return write_keyword_task(tmp_path_factory.mktemp("task"), (("train", 200), ("test", 60)),
                              columns=("sentence", "sentiment"))


def ft_config(run, task, strategy, **kw):
    c = load_config_file(CONFIGS / "finetune_classify.py")  # the file users run
    c.init_from = str(run)
    c.strategy = strategy
    c.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv", text_field="sentence",
                  label_field="sentiment", num_labeled=80, validation_fraction=0.5, max_len=16, batch_size=8)
    c.train.update(steps=60, lr=3e-3, warmup_steps=5, eval_every=20, log_every=20)
    c.unfreeze_every = 10
    c.mesh.shape = (1, 1, 1)
    c.forgetting.update(sequences=16, batch_size=8)
    c.update(kw)
    return c


@pytest.mark.parametrize("strategy", ["features", "light", "full", "progressive"])
def test_strategies_on_a_csv_task(strategy, pretrained_run, csv_task, tmp_path):
    summary = finetune.run(ft_config(pretrained_run, csv_task, strategy), tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["test_accuracy"] == summary["test_accuracy"] and saved["num_labeled"] == (80 if strategy == "features" else 40) and saved["labels_used"] == 80
    assert saved["label_names"] == ["neg", "pos"]
    for key in ("test_macro_f1", "validation_curve", "trainable_params", "frozen_params",
                "optimizer_state_bytes", "wall_seconds", "compile_seconds"):
        assert key in saved, key
    assert 0 < saved["compile_seconds"] < saved["wall_seconds"]
    if strategy != "features":
        assert saved["train_step_compilations"] == 1
        f = saved["forgetting"]
        assert f["pretrain_loss_before"] > 0 and np.isclose(f["increase"], f["pretrain_loss_after"] - f["pretrain_loss_before"])
    if strategy == "light":
        assert saved["frozen_params"] > 0 and saved["optimizer_state_bytes"] < 2 * 4 * saved["trainable_params"] + 1024
    if strategy == "full":
        assert saved["frozen_params"] == 0 and saved["test_accuracy"] >= 0.75  # the marker word is learnable


def test_scratch_baseline_and_errors(pretrained_run, csv_task, tmp_path):
    c = ft_config(pretrained_run, csv_task, "full", init_from="none", model_like=str(pretrained_run))
    summary = finetune.run(c, tmp_path / "scratch")
    assert summary["forgetting"] is None and summary["trainable_params"] > 0
    with pytest.raises(PretrainedError, match="needs model_like"):
        finetune.run(ft_config(pretrained_run, csv_task, "full", init_from="none"), tmp_path / "x")
    with pytest.raises(PretrainedError, match="not a tljax pretraining run"):
        finetune.run(ft_config(tmp_path, csv_task, "full"), tmp_path / "y")
    with pytest.raises(ConfigError, match="strategy='fancy' unknown"):
        finetune.run(ft_config(pretrained_run, csv_task, "fancy"), tmp_path / "z")


def test_word_vectors_as_features(csv_task, tmp_path):
    """Fixed word vectors (word2vec text format, as gensim writes it) feed the same probe."""
    rng = np.random.default_rng(1)
    words = "the of and to in a is that for it as was with be by on not he this are great little".split()
    lines = [f"{len(words)} 8"] + [w + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=8)) for w in words]
    (tmp_path / "vectors.txt").write_text("\n".join(lines) + "\n")
    c = ft_config(tmp_path, csv_task, "features")
    summary = finetune.run(c, tmp_path / "run")
    assert summary["test_accuracy"] >= 0.75 and summary["frozen_params"] == len(words) * 8
    with pytest.raises(ConfigError, match="fixed word vectors: use strategy=features"):
        finetune.run(ft_config(tmp_path, csv_task, "light"), tmp_path / "run2")
