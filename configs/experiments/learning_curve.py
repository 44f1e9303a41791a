"""Transfer vs training from scratch across label budgets, on Rotten Tomatoes by default.

    tljax experiment --config configs/experiments/learning_curve.py --workdir runs/lc              # full grid
    tljax experiment --config configs/experiments/learning_curve.py:quick --workdir runs/lc_quick  # README main job

Full grid: 5 label budgets × 14 methods, 5 seeds at 100 and 300 labels and 3 at the others = 266 cells, after pretraining the tiny tljax BERT and
word2vec on the embedded corpus. The four decoder methods use SmolLM2-135M (``hf:smollm2``): last-token and
mean features + logreg, LoRA (rank 8 on the attention query/value kernels + head), and prompting
(``prompt``: zero-shot by default, which uses no labels and is computed once and copied to every budget and
seed; ``--config.prompt.k_shot=4`` draws k in-context examples from each cell's label budget).
``:quick`` keeps 3 budgets (100, 1,000, all) and one seed, at most 150 fine-tuning steps per cell instead
of 300, trains word2vec for one epoch, and runs NO decoder method (30 cells): each SmolLM2 method encodes
every text with a 135M-parameter model, minutes per cell on 2 cores, which would break :quick's ~16 minutes;
add them with ``--config.methods`` (e.g. the names in ``tljax.experiment.DECODER_METHODS``). The three
claims are still answered. Measured times and results: docs/results.md, docs/decoders.md.

Task-adaptive pretraining is opt-in: ``--config.methods='("scratch","minilm_full","minilm_tapt")'`` adds
``minilm_tapt`` / ``tljax_tapt`` (MiniLM / the tiny tljax BERT trained further with masked LM on the task's
unlabeled training texts by configs/adapt_mlm.py, once per workdir, then full fine-tuning).

Any labeled set works: ``--config.finetune.data.train=csv:train.csv
--config.finetune.data.test=csv:test.csv``; a finished starting point is reused with
``--config.tljax.init_from=runs/bert_tiny`` / ``--config.word2vec.init_from=runs/w2v``.
"""
from pathlib import Path

import ml_collections

from tljax.defaults import finetune_config, prompt_config
from tljax.experiment import DECODER_METHODS, DEFAULT_METHODS

_CONFIGS = Path(__file__).resolve().parents[1]


def get_config(arg=None):
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown config argument {arg!r}; use learning_curve.py or learning_curve.py:quick")
    quick = arg == "quick"
    c = ml_collections.ConfigDict()
    c.budgets = (100, 1000, 0) if quick else (100, 300, 1000, 3000, 0)  # labeled examples; 0 = all
    c.seeds = (0,) if quick else (0, 1, 2)
    # Budgets up to few_label_max run these seeds instead (their spread is the finding); () = seeds everywhere.
    c.few_label_seeds = () if quick else (0, 1, 2, 3, 4)
    c.few_label_max = 300
    # See tljax/experiment.py METHODS: the few-shot recipes are opt-in, and :quick runs no decoder
    # (SmolLM2) method (see the docstring).
    c.methods = tuple(m for m in DEFAULT_METHODS if not (quick and m in DECODER_METHODS))
    c.max_epochs = 20  # a cell trains for at most this many passes over its labeled set (≤ finetune.train.steps)
    c.keep_models = False  # True: every cell keeps its classifier in cells/<method>/<cell>/model/ (disk)

    # Starting points. "" = make it here (pretrain / train into the workdir, reused on re-runs).
    c.tljax = ml_collections.ConfigDict(dict(
        init_from="", pretrain_config=str(_CONFIGS / "bert_mlm_tiny.py"), pretrain_steps=0))  # 0 = the file's
    c.word2vec = ml_collections.ConfigDict(dict(
        init_from="", config=str(_CONFIGS / "word2vec.py"), epochs=1 if quick else 0))  # 0 = the file's
    c.minilm = ml_collections.ConfigDict(dict(init_from="hf:minilm"))
    c.smollm2 = ml_collections.ConfigDict(dict(init_from="hf:smollm2"))  # the causal LM of the decoder methods
    # The *_tapt methods (opt-in): their start trained further by this pretraining config on the task's
    # training texts (never the test texts), once per workdir.
    c.tapt = ml_collections.ConfigDict(dict(config=str(_CONFIGS / "adapt_mlm.py"), steps=0))  # 0 = the file's
    # Peak learning rate per starting point (a 22M-parameter pretrained encoder wants a small one; the
    # SmolLM2 rate is LoRA's: only the adapters and the head train). lpft: LP-FT's fine-tuning stage (a
    # small rate keeps the probe's head); setfit: the pair-tuning stage.
    c.lr = ml_collections.ConfigDict(dict(scratch=5e-4, tljax=5e-4, minilm=5e-5, smollm2=1e-3, lpft=1e-5,
                                          setfit=2e-5, tljax_tapt=5e-4, minilm_tapt=5e-5))
    # The prompting methods (smollm2_prompt: tljax.zeroshot; smollm2_prompt_probe: a probe on its label
    # scores). Labels of Rotten Tomatoes: fresh / rotten.
    c.prompt = prompt_config()
    c.prompt.update(prompt="Review: {text}\nSentiment:", verbalizer='{"fresh": " positive", "rotten": " negative"}')
    c.prompt.k_shot = 0  # smollm2_prompt: in-context examples from the cell's label budget (0: zero-shot, no labels)
    c.prompt.limit = 0  # smollm2_prompt: score only the first N test texts (0 = all)

    # Every cell: these fine-tuning settings + its method, budget and seed.
    c.finetune = finetune_config()
    del c.finetune.save_model  # keep_models above decides it for every cell
    del c.finetune.prompt  # the prompt node above decides it for every prompting cell
    # :quick halves the longest cells (MiniLM at 1,000+ labels) to fit about 15 minutes on 2 cores.
    c.finetune.train.update(steps=150 if quick else 300, eval_every=50, log_every=50, patience=2)
    return c
