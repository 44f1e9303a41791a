"""Base configs that the files in ``configs/`` start from. Every field is documented here once."""
from __future__ import annotations

import ml_collections

from tljax.sharding import DEFAULT_RULES

# XLA:CPU options of the inference functions (validation, test, prediction, frozen features; not the train
# step): no YNNPACK dot fusions, whose large fused dot + LayerNorm + GELU blocks run MiniLM inference ~1.5x
# slower than XLA's own dots (docs/benchmarks.md). A --xla_cpu_experimental_ynn_fusion_type in XLA_FLAGS wins.
CPU_INFERENCE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

# What ``tljax experiment`` runs when its config has no ``experiment`` field (the learning-curve configs).
EXPERIMENT = "learning_curve"
EXPERIMENTS = ("learning_curve", "failure_modes")  # experiment = the config's field; tljax/experiment.py, failures.py


def pretrain_config(objective: str, kind: str) -> ml_collections.ConfigDict:
    """Defaults for ``tljax pretrain``; ``objective`` "mlm" (with kind "bert") or "clm" (kind "gpt" or
    "llama")."""
    c = ml_collections.ConfigDict()
    c.objective = objective  # "mlm" | "clm"
    c.seed = 0  # init, masking, dropout and data order all derive from it
    # Continued pretraining (docs/pretraining.md) keeps the source's tokenizer and architecture: model.* left at
    # these defaults come from it (a different value is an error); dropout, attention_dropout, dtype,
    # attention_impl, remat and scan_layers come from this config. Checkpoints in the workdir resume instead.
    c.init_from = ""  # "" = from scratch | a pretraining workdir (or converted run) | hf:FOLDER | hf:minilm | gguf:FILE

    # Architecture (TransformerConfig; with init_from: the source's). vocab_size 0 = the tokenizer's size, rounded to 128.
    c.model = ml_collections.ConfigDict(dict(
        kind=kind, vocab_size=0, hidden_size=128, num_layers=2, num_heads=2, mlp_dim=512, max_len=128,
        type_vocab_size=2, dropout=0.1, attention_dropout=0.1,
        activation={"bert": "gelu", "gpt": "gelu_new", "llama": "silu"}.get(kind, "gelu"),
        layer_norm_eps=1e-12 if kind == "bert" else 1e-5, init_std=0.02, use_pooler=kind == "bert",
        dtype="float32", attention_impl=ml_collections.FieldReference(None, field_type=str), remat="none",
        scan_layers=False))
    if kind == "llama":
        # Grouped-query key/value heads (0 = num_heads), rotary base, HF-style rope scaling as JSON ("" =
        # none), LM head tied to the word embeddings (False: its own lm_head/kernel).
        c.model.update(num_kv_heads=0, rope_theta=10000.0, rope_scaling="", tie_embeddings=True)

    c.mlm = ml_collections.ConfigDict(dict(rate=0.15, mask_prob=0.8, random_prob=0.1))
    # Parameter policy (tljax.policy): "REGEX: frozen" or "REGEX: lr=X, wd=Y, from=STEP" over parameter paths.
    c.param_rules = ()

    c.data = ml_collections.ConfigDict()
    # builtin:rotten_tomatoes_train_text = the Rotten Tomatoes training reviews + plot synopses (never test texts)
    c.data.source = "builtin:corpus"  # text:GLOB | jsonl:GLOB[@field] | csv:GLOB[@field] | tfds:name/config:split | builtin:NAME
    # "" = builtin:corpus_eval when training on builtin:corpus, else data.holdout of data.source's documents
    c.data.eval_source = ""
    c.data.holdout = 0.01  # held-out fraction of data.source when eval_source is "" (documents, or chunks of few)
    c.data.subsample = 1.0  # keep this fraction of documents (by text hash); tiny configs use less
    c.data.seq_len = 128
    c.data.batch_size = 32  # global batch, over all processes and devices
    c.data.tokenizer = ml_collections.ConfigDict(dict(
        path="",  # a Hugging Face tokenizer folder; "" = train one on data.source
        kind="wordpiece" if kind == "bert" else "bpe", vocab_size=8192, train_fraction=0.5))

    c.train = ml_collections.ConfigDict(dict(
        steps=1000, lr=5e-4, warmup_steps=100, schedule="cosine", end_lr_ratio=0.1, weight_decay=0.01,
        b1=0.9, b2=0.999, eps=1e-6, grad_clip=1.0, log_every=50, eval_every=250, eval_batches=8,
        checkpoint_every=250, keep_checkpoints=2,
        run_steps=0))  # stop this invocation after run_steps steps (0 = run to train.steps); re-run resumes

    # Device mesh: one -1 takes the remaining devices. Rules map logical axis names to mesh axes.
    c.mesh = ml_collections.ConfigDict(dict(axes=("data", "fsdp", "tensor"), shape=(-1, 1, 1)))
    c.sharding_rules = DEFAULT_RULES
    return c


def prompt_config() -> ml_collections.ConfigDict:
    """How a causal LM scores each label of a text by prompting (tljax.tasks.prompt): ``tljax zeroshot`` and
    finetune's ``recipe=prompt_probe`` (its ``prompt`` node). "\\n" and "\\t" typed as two characters in the
    prompt and the continuations mean newline and tab, so a shell's "Review: {text}\\nSentiment:" works."""
    c = ml_collections.ConfigDict()
    c.prompt = "{text}"  # filled with each text ({text}); the verbalizer continues it
    # JSON object: label (as in the data) -> continuation text, e.g. {"pos": " positive"}; "" = tljax zeroshot
    # refuses, recipe=prompt_probe scores each label's own name after a space
    c.verbalizer = ""
    c.normalize = "sum"  # "sum" of the continuation's token log-probabilities, or their "mean"
    c.max_len = 512  # longest scored sequence in tokens; a longer prompt loses tokens at its start
    c.batch_size = 16  # prompts scored per forward pass
    return c


def zeroshot_config() -> ml_collections.ConfigDict:
    """Defaults for ``tljax zeroshot``: the prompt settings (``prompt_config``) plus in-context examples."""
    c = prompt_config()
    c.k_shot = 0  # in-context examples before each query, drawn class-balanced from `train`
    c.train = ""  # labeled spec the in-context examples come from (csv:/jsonl:/tfds:/builtin:)
    c.num_labeled = 0  # the labeled budget the k examples are drawn from (0 = all of `train`)
    c.example_separator = "\n\n"  # between in-context examples and before the query
    c.text_field = "text"
    c.label_field = "label"
    c.limit = 0  # score only the first N texts (0 = all)
    c.seed = 0
    return c


def finetune_config() -> ml_collections.ConfigDict:
    """Defaults for ``tljax finetune`` (configs/finetune_classify.py), sized for the tiny pretrained models
    on 2 CPU cores."""
    c = ml_collections.ConfigDict()
    c.init_from = ""  # pretraining workdir / its checkpoints/ / a step folder, or "none"
    c.model_like = ""  # with init_from=none: the run whose architecture and tokenizer to use
    c.strategy = "full"  # features | light | full | progressive | lora
    # Few-shot recipes: docs/transfer.md "Few-shot recipes".
    c.recipe = ""  # "" = the strategy alone | lpft (probe, then fine-tune from its head) | setfit (pairs + logreg head) | prompt_probe
    # recipe=prompt_probe (strategy=features): each text's features are a causal LM's log-probabilities of
    # the label continuations after the filled prompt, the scores of tljax zeroshot.
    # recipe=prompt_probe: how each label of a text is scored (the prompt settings of tljax zeroshot)
    c.prompt = prompt_config()
    c.prompt_probe = ml_collections.ConfigDict(dict(
        hidden=False))  # also the pooled hidden features of strategy=features (see pooling), after the scores
    c.setfit = ml_collections.ConfigDict(dict(
        pair_iterations=20))  # setfit: pairs per labeled example = 2 x this (one same-label, one other-label)
    c.self_training = ml_collections.ConfigDict(dict(
        rounds=0,  # probe-headed runs (features, setfit): pseudo-label the unlabeled training texts this often
        threshold=0.9,  # keep pseudo-labels whose predicted probability is at least this
        max_unlabeled=2000))  # encode at most this many unlabeled training texts (a seeded sample)
    c.unfrozen_layers = 2  # light: how many top layers train
    c.unfreeze_every = 40  # progressive: steps between unfreezing one more group from the top
    c.layer_lr_decay = 1.0  # < 1: ELECTRA-style layer-wise rates (top layer = base rate)
    # strategy=lora: low-rank adapters on the backbone's kernels, the base frozen (tljax/lora.py, docs/transfer.md)
    c.lora = ml_collections.ConfigDict(dict(
        rank=8,  # r: A is [in, r], B is [r, out]
        alpha=16.0,  # the update is (alpha / rank) * A @ B
        dropout=0.0,  # probability of dropping each input row of A at a training step
        targets=(r"attention/(query|value)/kernel$",)))  # regexes over kernel paths; add r"mlp/[^/]+/kernel$" for the MLP
    # Own parameter rules, before the strategy's preset (first match wins): "REGEX: frozen" or
    # "REGEX: lr=X, wd=Y, from=STEP" over paths like encoder/layer_3/mlp/output/kernel (docs/transfer.md).
    c.param_rules = ()
    c.overwrite = False  # True: replace a run of another config in the workdir (its checkpoints are removed)
    c.pooling = "auto"  # auto (bert: mean over tokens; gpt: last token) | cls ([CLS] + pooler) | mean | last
    c.head_dropout = 0.1
    c.seed = 0
    c.overwrite = False  # True: replace a finished result of another config in the workdir
    # Leave the selected classifier in workdir/model/ (tljax.classifier: predict, evaluate, convert).
    c.save_model = True
    c.probe = ml_collections.ConfigDict(dict(kind="logreg", c_grid=(0.01, 0.1, 1.0, 10.0), mlp_hidden=256,
        cv_folds=5))  # choose C by stratified k-fold CV over the whole budget (0 = on the validation split)

    c.data = ml_collections.ConfigDict(dict(
        name="",  # a built-in dataset (rotten_tomatoes); "" = train/test below if given, else rotten_tomatoes
        train="", test="",  # csv:PATH | jsonl:PATH | tfds:name/config:split
        text_field="text", label_field="label",
        num_labeled=0,  # the label budget: ALL labels read, validation included (class-balanced; 0 = all)
        validation_fraction=0.2,  # of the budget, carved out (stratified, >= 1 per class) for early stopping
        max_validation=500,  # at most this many carved-out validation examples
        validation="",  # extra labeled validation beyond the budget (csv:PATH, ...); counted in labels_used
        max_len=64, batch_size=16))

    c.train = ml_collections.ConfigDict(dict(
        steps=300, lr=5e-4, warmup_steps=30, schedule="linear", end_lr_ratio=0.0, weight_decay=0.01,
        b1=0.9, b2=0.999, eps=1e-6, grad_clip=1.0, eval_every=25, log_every=25,
        checkpoint_every=100, keep_checkpoints=1,  # 0 = no checkpoints (a signal still saves one)
        patience=0))  # stop after this many evaluations without validation gain (0 = never)

    # Forgetting: pretraining-objective loss on the pretraining run's held-out text, before vs after.
    c.forgetting = ml_collections.ConfigDict(dict(enabled=True, sequences=256, batch_size=32))

    c.mesh = ml_collections.ConfigDict(dict(axes=("data", "fsdp", "tensor"), shape=(-1, 1, 1)))
    c.sharding_rules = DEFAULT_RULES
    return c


def word2vec_config() -> ml_collections.ConfigDict:
    """Defaults for ``tljax word2vec`` (configs/word2vec.py): skip-gram with negative sampling, as word2vec.c."""
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin:corpus"  # text:GLOB | jsonl:GLOB[@field] | tfds:name/config:split | builtin:corpus
    c.model = "skipgram"  # "skipgram" | "cbow" (mean of the context vectors)
    c.dim = 100  # vector size
    c.window = 5  # maximum distance; each centre word draws its window from 1..window
    c.negatives = 5  # negative samples per (centre, context) pair, from unigram^0.75
    c.min_count = 5  # words seen fewer times are dropped from the vocabulary and the text
    c.max_vocab = 0  # > 0: keep only this many most frequent words
    c.sample = 1e-3  # frequent-word subsampling threshold (0 = off)
    c.epochs = 5
    c.lr = 0.025  # SGD learning rate, decays linearly to min_lr over all epochs
    c.min_lr = 1e-4
    c.batch_size = 256  # (centre, context) pairs per SGD step
    c.steps_per_call = 256  # SGD steps per jitted call (lax.scan); fewer dispatches
    c.chunk_tokens = 200_000  # documents are windowed, subsampled and shuffled in chunks of this size
    c.table_size = 10_000_000  # negative-sampling table slots
    c.log_seconds = 10.0
    c.seed = 0
    return c
