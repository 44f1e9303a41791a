"""Transfer vs training from scratch across label budgets, on Rotten Tomatoes by default.

    tljax experiment --config configs/experiments/learning_curve.py --workdir runs/lc              # full grid
    tljax experiment --config configs/experiments/learning_curve.py:quick --workdir runs/lc_quick  # README main job

Full grid: 5 label budgets × 10 methods × 3 seeds = 150 fine-tuning cells, after pretraining the tiny
tljax BERT and word2vec on the embedded corpus. ``:quick`` keeps 3 budgets (100, 1,000, all) and one
seed (30 cells), at most 150 fine-tuning steps per cell instead of 300, and trains word2vec for one
epoch: the three claims are still answered. Measured times
and results: docs/results.md.

Any labeled set works: ``--config.finetune.data.train=csv:train.csv
--config.finetune.data.test=csv:test.csv``; a finished starting point is reused with
``--config.tljax.init_from=runs/bert_tiny`` / ``--config.word2vec.init_from=runs/w2v``.
"""
from pathlib import Path

import ml_collections

from tljax.defaults import finetune_config
from tljax.experiment import DEFAULT_METHODS

_CONFIGS = Path(__file__).resolve().parents[1]


def get_config(arg=None):
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown config argument {arg!r}; use learning_curve.py or learning_curve.py:quick")
    quick = arg == "quick"
    c = ml_collections.ConfigDict()
    c.budgets = (100, 1000, 0) if quick else (100, 300, 1000, 3000, 0)  # labeled examples; 0 = all
    c.seeds = (0,) if quick else (0, 1, 2)
    c.methods = DEFAULT_METHODS  # see tljax/experiment.py METHODS (the few-shot recipes are opt-in)
    c.max_epochs = 20  # a cell trains for at most this many passes over its labeled set (≤ finetune.train.steps)

    # Starting points. "" = make it here (pretrain / train into the workdir, reused on re-runs).
    c.tljax = ml_collections.ConfigDict(dict(
        init_from="", pretrain_config=str(_CONFIGS / "bert_mlm_tiny.py"), pretrain_steps=0))  # 0 = the file's
    c.word2vec = ml_collections.ConfigDict(dict(
        init_from="", config=str(_CONFIGS / "word2vec.py"), epochs=1 if quick else 0))  # 0 = the file's
    c.minilm = ml_collections.ConfigDict(dict(init_from="hf:minilm"))
    # Peak learning rate per starting point (a 22M-parameter pretrained encoder wants a small one).
    # lpft: LP-FT's fine-tuning stage (a small rate keeps the probe's head); setfit: the pair-tuning stage.
    c.lr = ml_collections.ConfigDict(dict(scratch=5e-4, tljax=5e-4, minilm=5e-5, lpft=1e-5, setfit=2e-5))

    # Every cell: these fine-tuning settings + its method, budget and seed.
    c.finetune = finetune_config()
    # :quick halves the longest cells (MiniLM at 1,000+ labels) to fit about 15 minutes on 2 cores.
    c.finetune.train.update(steps=150 if quick else 300, eval_every=50, log_every=50, patience=2)
    return c
