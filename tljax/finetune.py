"""Fine-tuning and feature-based transfer for text classification.

Sections: (1) start point and data, (2) the ``features`` strategy (frozen encoder → cached pooled features
→ linear probe), (3) gradient strategies (``light``, ``full``, ``progressive``, optional layer-wise rates)
as one sharded train step, (4) forgetting of the pretraining objective, (5) summary.
Resume order for weights: ``init_from`` checkpoint (backbone + pooler) → fresh head; ``none`` → all fresh.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import flax.linen as nn
from flax import traverse_util

from tljax import config as config_lib
from tljax import classifier, distributed, engine, lora, memory, policy
from tljax import defaults
from tljax import workdir as workdir_lib
from tljax import sharding as shd
from tljax.data import labeled, packing
from tljax.data import lm as lm_data
from tljax.data import tokenizer as tok_lib
from tljax.init_from import resolve
from tljax.models import LanguageModel, SequenceClassifier
from tljax.pretrained import Pretrained, PretrainedError
from tljax.state import count_params
from tljax.tasks import classify, contrastive
from tljax.tasks import prompt as prompt_lib
from tljax.tasks import lm as lm_task
from tljax.utils import cache_dir, compile_seconds, enable_compilation_cache, is_lead_process, log, write_json


# ----------------------------------------------------------------------------------------------------
# (1) Inputs
# ----------------------------------------------------------------------------------------------------
def merge_pretrained(fresh: dict, pretrained: dict, new_prefixes=("classifier",)) -> tuple[dict, list[str]]:
    """Copy every pretrained leaf whose path the classifier also has; keep the fresh leaves under
    ``new_prefixes`` (the new head). Returns (params, paths kept fresh). Raises PretrainedError listing
    every path whose shape differs or that one side lacks (other than the LM head, which a classifier
    does not use, and a pooler that the checkpoint lacks, which starts fresh)."""
    fresh_flat = traverse_util.flatten_dict(fresh)
    ckpt_flat = traverse_util.flatten_dict(pretrained)
    merged, kept_fresh, problems = {}, [], []
    for path, value in fresh_flat.items():
        name = "/".join(path)
        if path[0] in new_prefixes:
            merged[path] = value
            kept_fresh.append(name)
        elif path not in ckpt_flat:
            if path[0] == "pooler":
                merged[path] = value
                kept_fresh.append(name)
            else:
                problems.append(f"{name}: model {tuple(value.shape)}, missing in checkpoint")
        elif tuple(ckpt_flat[path].shape) != tuple(value.shape):
            problems.append(f"{name}: checkpoint {tuple(ckpt_flat[path].shape)} vs model {tuple(value.shape)}")
        else:
            merged[path] = np.asarray(ckpt_flat[path], dtype=value.dtype)
    for path, value in ckpt_flat.items():
        if path[0] in ("encoder", "decoder") and path not in fresh_flat:
            problems.append(f"{'/'.join(path)}: checkpoint {tuple(value.shape)}, missing in model")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; … {len(problems) - 8} more" if len(problems) > 8 else "")
        raise PretrainedError(f"checkpoint does not fit the model ({len(problems)} parameter(s)): {shown}")
    return traverse_util.unflatten_dict(merged), kept_fresh


def pooling_for(config, kind: str) -> str:
    """``auto``: the mean over tokens for encoders (MLM pretraining never trains BERT's pooler, and
    sentence encoders such as MiniLM are trained for mean pooling: on Rotten Tomatoes at 100 labels
    MiniLM fine-tunes to 0.70 with mean and 0.64 with [CLS] + pooler), the last token for GPT."""
    if config.pooling != "auto":
        return config.pooling
    return "mean" if kind == "bert" else "last"


# ----------------------------------------------------------------------------------------------------
# (2) Feature-based transfer
# ----------------------------------------------------------------------------------------------------
def features_fn(model: SequenceClassifier):
    """The jitted ``(params, ids [B, T], mask [B, T]) -> pooled features [B, H]`` of a frozen encoder."""
    return classify.jit_inference(lambda p, i, m: model.apply({"params": p}, i, m, method=SequenceClassifier.features))


def extract_features(fn, params, ids: np.ndarray, mask: np.ndarray, hidden: int, batch: int = 128) -> np.ndarray:
    """Pooled features [N, H] float32 of ``fn`` (from ``features_fn``) over all rows."""
    out = classify.batched_apply(fn, params, ids, mask, batch)
    return np.zeros((0, hidden), np.float32) if out is None else out


def weights_digest(params: dict) -> str:
    """sha1 of every leaf's path, dtype, shape and bytes: the feature cache follows the weights themselves,
    not a path that a new run may reuse."""
    h = hashlib.sha1()
    for path, leaf in sorted(traverse_util.flatten_dict(params, sep="/").items()):
        leaf = np.ascontiguousarray(leaf)
        h.update(f"{path}|{leaf.dtype}|{leaf.shape}".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()


def cached_features(store_key: list[str], texts: list[str], compute) -> np.ndarray:
    """Features [N, H] of ``texts``, cached per text: one store per encoder setting (``store_key``: digest of
    the encoder's weights, tokenizer fingerprint, pooling, length) in ``$TLJAX_DATA_DIR/features/``, so
    overlapping label budgets and seeds compute each text once. ``compute(rows [n] int) -> [n, H]`` encodes
    the given rows of ``texts`` (n may be 0)."""
    path = cache_dir() / "features" / f"{hashlib.sha1('|'.join(store_key).encode()).hexdigest()[:20]}.npz"
    digests = np.asarray([hashlib.sha1(t.encode("utf-8")).digest() for t in texts], dtype="S20")
    if path.exists():
        with np.load(path) as f:
            stored_keys, stored = f["keys"], f["features"]
    else:
        stored_keys, stored = np.zeros((0,), "S20"), None
    index = {k: i for i, k in enumerate(stored_keys.tolist())}
    new_keys, new_rows = np.unique(digests, return_index=True)
    missing = [(k, r) for k, r in zip(new_keys.tolist(), new_rows.tolist()) if k not in index]
    if missing:
        computed = np.asarray(compute(np.asarray([r for _, r in missing])), np.float32)
        stored = computed if stored is None else np.concatenate([stored, computed])
        stored_keys = np.concatenate([stored_keys, np.asarray([k for k, _ in missing], dtype="S20")])
        index.update({k: len(index) + i for i, (k, _) in enumerate(missing)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, keys=stored_keys, features=stored)
        os.replace(tmp, path)  # atomic: an interrupted run leaves the previous store intact
    if stored is None:  # no texts and no store yet: compute knows the feature width
        return np.asarray(compute(np.zeros((0,), np.int64)), np.float32)
    return stored[np.asarray([index[k] for k in digests.tolist()], dtype=np.int64)]


def feature_scaler():
    """A StandardScaler that leaves numerically constant features unscaled (scale 1).

    scikit-learn rescales a feature whose spread is tiny but not exactly zero: a hidden dimension that a
    LayerNorm with a ~0 gain keeps at ~1e-31 got ``scale_`` 8e-33 on MiniLM, so its rounding noise became
    a unit-variance input, and LP-FT's head folded from it (coef / scale) overflowed float32 at step 0.
    Here a feature whose spread is below 1e-6 of the largest one's counts as constant."""
    from sklearn.preprocessing import StandardScaler

    class FeatureScaler(StandardScaler):
        def fit(self, X, y=None, sample_weight=None):
            super().fit(X, y, sample_weight)
            if self.scale_ is not None:
                floor = 1e-6 * float(np.max(self.scale_, initial=0.0))
                self.scale_ = np.where(self.scale_ > floor, self.scale_, 1.0)
            return self

    return FeatureScaler()


def _probe_estimator(cfg, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    if cfg.probe.kind == "logreg":
        clf = LogisticRegression(C=c, max_iter=2000)
    elif cfg.probe.kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(cfg.probe.mlp_hidden,), alpha=1.0 / c, max_iter=500,
                            random_state=seed)
    else:
        raise config_lib.ConfigError(f"probe.kind={cfg.probe.kind!r} unknown; use 'logreg' or 'mlp'")
    return make_pipeline(feature_scaler(), clf)


def cv_folds_for(cfg, labels: np.ndarray) -> int:
    """How many stratified folds choose C on ``labels`` [N]: ``probe.cv_folds``, at most the smallest class's
    count; 0 when CV is off or impossible (a class with a single example)."""
    folds = int(cfg.probe.get("cv_folds", 0))
    smallest = min([int(n) for n in np.bincount(labels) if n > 0] or [0])
    folds = min(folds, smallest)
    return folds if folds >= 2 else 0


def select_probe(cfg, x: np.ndarray, y: np.ndarray, seed: int, x_val=None, y_val=None):
    """Choose the probe's regularisation C from ``probe.c_grid`` and fit it.

    x [N, H], y [N]: the labeled examples it trains on. With x_val [M, H] / y_val [M] (M > 0), C is chosen
    on them (accuracy); otherwise by stratified ``cv_folds_for`` -fold cross-validation on (x, y), or the
    grid's middle value when CV is impossible. The chosen probe is refit on all of (x, y).
    Returns (fitted sklearn pipeline, curve [{"C", "accuracy"}], chosen C)."""
    from sklearn.model_selection import StratifiedKFold
    curve = []
    use_val = x_val is not None and len(y_val) > 0
    folds = 0 if use_val else cv_folds_for(cfg, y)
    for c in cfg.probe.c_grid:
        if use_val:
            acc = float(_probe_estimator(cfg, c, seed).fit(x, y).score(x_val, y_val))
        elif folds:
            split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
            acc = float(np.mean([_probe_estimator(cfg, c, seed).fit(x[a], y[a]).score(x[b], y[b]) for a, b in split]))
        else:
            acc = float("nan")
        curve.append({"C": c, "accuracy": acc})
    if use_val or folds:
        best_c = max(curve, key=lambda r: r["accuracy"])["C"]  # first of equals: the strongest regularisation
    else:
        best_c = cfg.probe.c_grid[len(cfg.probe.c_grid) // 2]
    return _probe_estimator(cfg, best_c, seed).fit(x, y), curve, best_c


def probe_parameters(model) -> int:
    return sum(int(np.size(a)) for est in model.steps[1:] for a in
               (getattr(est[1], "coef_", None), getattr(est[1], "intercept_", None),
                *getattr(est[1], "coefs_", []), *getattr(est[1], "intercepts_", [])) if a is not None)


def fit_probe(cfg, features: dict, labels: dict, seed: int, extra_validation: bool = False,
              unlabeled: np.ndarray | None = None) -> dict:
    """Train the simple classifier on frozen features; choose its regularisation.

    features / labels: {"train", "validation", "test"} -> [N, H] / [N]. The validation examples are part of
    the label budget: with ``probe.cv_folds`` >= 2 (and no ``extra_validation``) C is chosen by k-fold CV over
    train + validation and the probe trains on all of them; otherwise C is chosen on validation. unlabeled
    [U, H]: features of unlabeled training texts for ``self_training.rounds`` of pseudo-labelling.
    Returns test predictions, the selection curve, the chosen C and the self-training log."""
    x, y = features["train"], labels["train"]
    x_val, y_val = features["validation"], labels["validation"]
    if cfg.probe.get("cv_folds", 0) and not extra_validation:
        x, y = np.concatenate([x, x_val]), np.concatenate([y, y_val])
        x_val = y_val = None
    model, curve, c = select_probe(cfg, x, y, seed, x_val, y_val)
    rounds = []
    if cfg.get("self_training", {}).get("rounds", 0):
        model, rounds = self_train(cfg, model, x, y, unlabeled, seed)
    return {"test_predictions": model.predict(features["test"]), "validation_curve": curve, "best_C": c,
            "probe_parameters": probe_parameters(model), "self_training": rounds, "model": model, "probe": model,
            "trained_on": int(len(y))}


def self_train(cfg, model, x: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None, seed: int):
    """Self-training of a probe: ``self_training.rounds`` times, pseudo-label the unlabeled features
    [U, H] with the current probe, keep those with probability >= ``self_training.threshold`` (class-
    balanced: as many per class as the rarest class has confident ones), and refit the probe (same C) on
    the labeled (x [N, H], y [N]) plus the kept ones. Returns (probe, [per round: kept, per-class counts])."""
    log_rows = []
    if unlabeled is None or not len(unlabeled):
        log("self-training: no unlabeled training texts (the budget is the whole training set); skipped")
        return model, log_rows
    num_classes = len(model.classes_)
    for r in range(int(cfg.self_training.rounds)):
        proba = model.predict_proba(unlabeled)
        pred, conf = proba.argmax(1), proba.max(1)
        confident = [np.flatnonzero((pred == k) & (conf >= cfg.self_training.threshold)) for k in range(num_classes)]
        per_class = min(len(c) for c in confident)
        keep = np.concatenate([c[np.argsort(-conf[c], kind="stable")[:per_class]] for c in confident])
        log_rows.append({"round": r + 1, "kept": int(len(keep)), "per_class": int(per_class)})
        log(f"self-training round {r + 1}: {len(keep)} pseudo-labels kept ({per_class} per class) of {len(unlabeled)}")
        if not len(keep):
            break
        c = model.steps[-1][1].get_params().get("C", 1.0)
        model = _probe_estimator(cfg, c, seed).fit(np.concatenate([x, unlabeled[keep]]),
                                                   np.concatenate([y, model.classes_[pred[keep]]]))
    return model, log_rows


def unlabeled_pool(texts: list[str], test_texts: list[str], limit: int, seed: int) -> list[str]:
    """At most ``limit`` texts [U] of the unlabeled training pool (a seeded sample). Raises ValueError if
    any is a test text: pseudo-labels must never come from the test set."""
    leaked = set(texts) & set(test_texts)
    if leaked:
        raise ValueError(f"{len(leaked)} text(s) of the self-training pool are test texts; "
                         "pseudo-labels must come from training texts only")
    if len(texts) <= limit:
        return list(texts)
    rows = np.sort(np.random.default_rng(seed).choice(len(texts), limit, replace=False))
    return [texts[i] for i in rows]


def probe_head(model, num_classes: int) -> dict:
    """The classifier head {"kernel": [H, C], "bias": [C]} whose logits reproduce a fitted StandardScaler +
    LogisticRegression on raw features: the scaler is folded into the weights (w / scale, b - mean/scale · w).
    Binary logreg has one decision function d: the head gives logits (-d/2, d/2), whose softmax equals
    the probe's probabilities."""
    scaler, clf = model.steps[0][1], model.steps[-1][1]
    if not hasattr(clf, "coef_"):
        raise config_lib.ConfigError("recipe=lpft needs probe.kind=logreg (a linear probe to start the head from)")
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    coef = clf.coef_ / scale[None, :]  # [C or 1, H]
    intercept = clf.intercept_ - coef @ scaler.mean_
    if num_classes == 2 and coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    return {"kernel": np.asarray(coef.T, np.float32), "bias": np.asarray(intercept, np.float32)}


# ----------------------------------------------------------------------------------------------------
# (3) Gradient-based fine-tuning
# ----------------------------------------------------------------------------------------------------
def classifier_start(config, pre: Pretrained, num_classes: int, ids: np.ndarray, mask: np.ndarray
                     ) -> tuple[SequenceClassifier, dict]:
    """The classifier of ``config`` on ``pre``'s encoder and its starting parameters (host arrays): the
    checkpoint's backbone (and pooler if it has one) with a fresh head. ids / mask [b, T]: example rows."""
    model = SequenceClassifier(pre.model, num_classes, pooling=pooling_for(config, pre.model.kind),
                               head_dropout=config.head_dropout)
    # Jitted: an eager init dispatches every initializer op by op (seconds per run).
    fresh = jax.jit(model.init)(jax.random.key(config.seed), ids, mask)["params"]
    fresh = jax.tree.map(np.asarray, nn.meta.unbox(fresh))
    if pre.params is None:
        return model, fresh
    start_params, kept_fresh = merge_pretrained(fresh, pre.params)
    if any(p.startswith("pooler") for p in kept_fresh):
        log("note: the checkpoint has no pooler; it starts fresh")
    return model, start_params


@dataclasses.dataclass
class GradientTraining:
    """What a gradient strategy trains with. run: the engine's Setup (state, policy, mesh). train_step:
    ``(state, ids [B, t], mask [B, t], labels [B]) -> (state, metrics)``, jitted, state donated.
    logits_fn: ``(params, ids [b, t], mask [b, t]) -> logits [b, C]`` (deterministic, replicated output), the
    one compiled function of validation, test and prediction. put: a global host batch -> its sharded array."""

    run: engine.Setup
    train_step: Callable
    logits_fn: Callable
    put: Callable[[np.ndarray], jax.Array]
    # start_params: what training starts from (with LoRA: plus the adapters). merged: host params -> the
    # plain model params a run keeps (LoRA: adapters merged into their kernels). lora: summary entry or None.
    start_params: dict = None
    merged: Callable = lambda p: p
    lora: dict | None = None


def build_gradient(config, model: SequenceClassifier, start_params: dict, num_layers: int,
                   ids: np.ndarray, mask: np.ndarray) -> GradientTraining:
    """The engine setup, train step and evaluation function of a gradient strategy (``full``, ``light``,
    ``progressive``, ``lora``): the strategy's preset plus the config's own ``param_rules`` (first match
    wins) as the parameter policy. ids / mask [b, T]: example rows (shapes only)."""
    rules = policy.parse_rules(config.param_rules) + policy.strategy_rules(
        config.strategy, num_layers, unfrozen_layers=config.unfrozen_layers, layer_lr_decay=config.layer_lr_decay,
        unfreeze_every=config.unfreeze_every)
    ids0, mask0 = ids[:1], mask[:1]
    init_params = lambda r: model.init(r, ids0, mask0)["params"]
    prepare, merged, scale, lora_summary = None, (lambda p: p), 1.0, None
    if config.strategy == "lora":
        # Adapters as their own subtree (tljax.lora); the task applies the model to the merged kernels.
        splits = lora.plan(jax.eval_shape(init_params, jax.random.key(0)), config.lora.targets)
        scale, rank, dropout = lora.scale_of(config.lora), int(config.lora.rank), float(config.lora.dropout)
        model_init = init_params
        init_params = lambda r: {**model_init(r), lora.KEY: lora.init(splits, rank, jax.random.fold_in(r, 7))}
        adapters = jax.jit(lambda r: lora.init(splits, rank, r))(jax.random.fold_in(jax.random.key(config.seed), 7))
        start_params = {**start_params, lora.KEY: jax.tree.map(np.asarray, adapters)}
        prepare = lambda p, r: lora.merge(p, scale, r, dropout)
        merged = lambda p: lora.merge_host(p, scale)
        lora_summary = {"adapter_params": lora.count(start_params), "kernels": len(splits), "rank": rank,
                        "alpha": float(config.lora.alpha)}
        log(f"lora: rank {rank}, alpha {config.lora.alpha:g}, {len(splits)} kernels "
            f"({', '.join(sorted({'/'.join(p[2:]) for p in splits}))}), {lora.count(start_params):,} adapter parameters")
    run = engine.setup(init_params, config.train, config.mesh, config.sharding_rules, config.seed, rules=rules,
                       start_params=start_params)
    batch_sharding, vec_sharding = run.batch_sharding(2), run.batch_sharding(1)
    step_fn = engine.compile_train_step(classify.train_loss(model, prepare), run,
                                        (batch_sharding, batch_sharding, vec_sharding))
    # Replicated logits: every process gets every row's predictions, however the batch is split. Params
    # with adapters (during training) are merged first; the kept ones are merged already.
    logits_fn = classify.jit_inference(
        lambda p, i, m: model.apply({"params": lora.merge(p, scale) if lora.KEY in p else p}, i, m, deterministic=True),
        out_shardings=shd.replicated(run.mesh))
    # a: a global batch [B, ...], the same on every process; each transfers only its devices' rows.
    put = lambda a: distributed.global_array(batch_sharding if a.ndim == 2 else vec_sharding, a.shape, a.__getitem__)
    return GradientTraining(run, step_fn, logits_fn, put, start_params, merged, lora_summary)


# ----------------------------------------------------------------------------------------------------
# (4) Forgetting
# ----------------------------------------------------------------------------------------------------
def pretraining_loss_fn(pre: Pretrained, num_sequences: int, batch: int):
    """``params -> loss`` of the pretraining objective (MLM or CLM, with the checkpoint's LM head) on the
    pretraining run's held-out text, for LanguageModel params; compiled once, so measuring before and after
    fine-tuning compiles one step. None when that text is not available."""
    cfg = ml_collections.ConfigDict(pre.config)
    try:
        _, eval_key = lm_data.data_keys(cfg.data)
        seqs = lm_data.packed_sequences(lambda: lm_data.eval_documents(cfg.data), eval_key, pre.tokenizer, cfg)
    except (FileNotFoundError, ValueError) as e:
        log(f"forgetting not measured: the pretraining eval text is unavailable ({e})")
        return None
    seqs = seqs[: max(batch, num_sequences // batch * batch)]
    model = LanguageModel(pre.model)
    specials = jnp.asarray(tok_lib.special_ids(pre.tokenizer), jnp.int32)
    sums_fn = lm_task.make_sums_fn(model, cfg, specials, len(pre.tokenizer),
                                   pre.tokenizer.mask_token_id if cfg.objective == "mlm" else 0)
    step = jax.jit(lm_task.make_eval_step(sums_fn, cfg.seed))

    def measure(params: dict) -> float | None:
        totals = np.zeros(3)
        for i in range(len(seqs) // batch):
            totals += np.asarray(step(params, jnp.asarray(seqs[i * batch: (i + 1) * batch]), i))
        if totals[2] == 0:
            log("forgetting not measured: no token of the held-out text is a prediction target")
            return None
        return float(totals[0] / totals[2])

    return measure


def with_backbone(lm_params: dict, classifier_params: dict) -> dict:
    """LanguageModel params whose backbone is the fine-tuned one (LM head kept from the checkpoint)."""
    out = dict(lm_params)
    for name in ("encoder", "decoder"):
        if name in classifier_params:
            out[name] = jax.device_get(classifier_params[name])
    return out


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------
def is_word_vectors(init_from: str) -> bool:
    """A word2vec run folder, a word2vec-format file, ``w2v:PATH`` or ``spacy:en_core_web_md``."""
    if init_from.startswith(("spacy:", "w2v:")):
        return True
    path = Path(init_from).expanduser()
    return ((path / "vectors.npz").exists() or (path / "vectors.txt").exists()
            or (path.is_file() and path.suffix in (".txt", ".bin", ".vec")))


def run(config, workdir: str | Path, feature_cache: bool = True) -> dict:
    """Fine-tune (or probe) per ``config`` into ``workdir``; returns and writes ``summary.json``.

    feature_cache: reuse frozen features of texts encoded by earlier runs (off when a run is timed, as in
    ``tljax experiment``: its wall seconds then include encoding every text). The config is checked first;
    the workdir is locked for the run, and a finished result of another config is not replaced unless
    ``overwrite`` is set."""
    config_lib.validate_finetune(config)
    with workdir_lib.locked(workdir):
        workdir_lib.check_finished_result(config, workdir)
        return _run(config, Path(workdir), feature_cache)


def _run(config, workdir: Path, feature_cache: bool) -> dict:
    t_start, compile_start = time.time(), compile_seconds()
    # A model's shapes compile once across runs (budgets, seeds, reruns): compilations stay on disk.
    enable_compilation_cache()
    workdir = Path(workdir)
    if config.strategy not in policy.STRATEGIES:
        raise config_lib.ConfigError(f"strategy={config.strategy!r} unknown; use one of {', '.join(policy.STRATEGIES)}")
    policy.parse_rules(config.param_rules)  # a bad rule fails here, before anything is read or written
    _check_unused_settings(config)
    if config.init_from == "none" and config.strategy != "full":
        raise config_lib.ConfigError("init_from=none is the from-scratch baseline: use strategy=full with it")
    word_vectors = is_word_vectors(config.init_from)
    if word_vectors and config.strategy != "features":
        raise config_lib.ConfigError(f"{config.init_from} holds fixed word vectors: use strategy=features with it")
    pre = None if word_vectors else resolve(config.init_from, config.model_like)
    data = labeled.load_labeled(config.data, config.seed)
    num_classes = len(data.label_names)
    y = {"train": data.train.labels, "validation": data.validation.labels, "test": data.test.labels}
    recipe = config.get("recipe", "")
    log(f"data: {len(y['train'])} labeled train, {len(y['validation'])} validation "
        f"({'extra: ' + config.data.validation if data.extra_validation else 'carved out of the label budget'}), "
        f"{len(y['test'])} test; {data.labels_used} labels used in all; {num_classes} classes {data.label_names}; "
        f"start: {config.init_from}, strategy: {config.strategy}" + (f", recipe: {recipe}" if recipe else ""))
    summary = {"strategy": config.strategy, "recipe": recipe, "init_from": config.init_from,
               "num_labeled": int(len(y["train"])), "num_validation": int(len(y["validation"])),
               "labels_used": int(data.labels_used),
               "validation_source": config.data.validation if data.extra_validation else "label budget",
               "num_test": int(len(y["test"])), "label_names": data.label_names, "seed": config.seed}

    if word_vectors and recipe == "prompt_probe":
        raise config_lib.ConfigError(f"{config.init_from} holds word vectors; recipe=prompt_probe needs a causal LM "
                                     f"with its LM head (e.g. --config.init_from=hf:smollm2)")
    if word_vectors:
        _claim_workdir(config, workdir)
        summary.update(pooling="mean of word vectors", **_run_word_vectors(config, data, y))
    elif recipe == "prompt_probe":
        verbalizer = _prompt_verbalizer(config, pre, data.label_names)
        hidden = None
        if config.prompt_probe.hidden:
            encoded = {name: classify.encode_texts(pre.tokenizer, getattr(data, name).texts, config.data.max_len)
                       for name in ("train", "validation", "test")}
            model, start_params = classifier_start(config, pre, num_classes, *(a[:1] for a in encoded["train"]))
            hidden = (model, start_params, encoded)
            summary["pooling"] = pooling_for(config, pre.model.kind)
        else:
            if config.pooling != "auto":
                log(f"note: pooling={config.pooling} is not used: prompt_probe.hidden=False (label scores only)")
            summary["pooling"] = ""
        _claim_workdir(config, workdir)
        summary.update(_run_prompt_probe(config, pre, verbalizer, data, y, hidden))
    else:
        pooling = pooling_for(config, pre.model.kind)
        encoded = {name: classify.encode_texts(pre.tokenizer, getattr(data, name).texts, config.data.max_len)
                   for name in ("train", "validation", "test")}
        model, start_params = classifier_start(config, pre, num_classes, *(a[:1] for a in encoded["train"]))
        summary["pooling"] = pooling
        if config.strategy == "lora":  # targets that match no kernel fail before the workdir is claimed
            lora.plan(jax.eval_shape(lambda r: model.init(r, encoded["train"][0][:1], encoded["train"][1][:1])[
                "params"], jax.random.key(0)), config.lora.targets)
        resume_allowed = _claim_workdir(config, workdir)
        if recipe == "setfit":
            tuned, setfit_info = _train_setfit_body(config, model, start_params, encoded, y, data, workdir,
                                                    resume_allowed)
            summary.update(_run_features(config, model, tuned, pre, data, encoded, y, use_cache=False))
            summary.update(setfit_info, trainable_params=setfit_info["body_trainable_params"] + summary["trainable_params"])
        elif config.strategy == "features":
            summary.update(_run_features(config, model, start_params, pre, data, encoded, y, feature_cache))
        else:
            if recipe == "lpft":
                start_params, lp = _linear_probe_head(config, model, start_params, encoded, y, num_classes)
                summary["lpft_probe"] = lp
            summary.update(_run_gradient(config, model, start_params, pre, encoded, y, workdir, resume_allowed))

    summary["test_macro_f1"] = classify.macro_f1(y["test"], summary.pop("test_predictions"), num_classes)
    deploy = summary.pop("deploy")
    summary["wall_seconds"] = time.time() - t_start
    summary["compile_seconds"] = compile_seconds() - compile_start
    if is_lead_process():
        # predictions.csv and (config.save_model) model/ before summary.json, which marks a finished run
        classifier.save_run_outputs(workdir, config, data, pre, summary["pooling"], deploy)
        write_json(workdir / "summary.json", summary)
    log(f"test accuracy {summary['test_accuracy']:.4f}, macro-F1 {summary['test_macro_f1']:.4f} "
        f"({config.strategy}{', ' + recipe if recipe else ''}, {summary['labels_used']} labels in all, "
        f"{summary['wall_seconds']:.0f}s)")
    return summary


def _check_unused_settings(config) -> None:
    """lora.* settings other than the defaults only mean something with strategy=lora, prompt.* and
    prompt_probe.* only with recipe=prompt_probe: never ignored silently. (Not in config.validate_finetune:
    an experiment's finetune node carries them for the cells of the methods that use them.)"""
    base = defaults.finetune_config()
    for node, used, fix in (("lora", config.strategy == "lora", "--config.strategy=lora"),
                            ("prompt", config.get("recipe", "") == "prompt_probe", "--config.recipe=prompt_probe"),
                            ("prompt_probe", config.get("recipe", "") == "prompt_probe", "--config.recipe=prompt_probe")):
        if node not in config or used:
            continue
        changed = [k for k in base[node] if config[node].get(k) != base[node][k]]
        if changed:
            what = f"strategy={config.strategy}" if node == "lora" else f"recipe={config.get('recipe', '')!r}"
            raise config_lib.ConfigError(f"{node}.{changed[0]} is set but {what}: use {fix}, or drop the "
                                         f"{node} settings")


def _claim_workdir(config, workdir: Path) -> bool:
    """Once every input has been checked: write config.json into ``workdir``. Returns whether the run may
    resume from checkpoints there (same settings; the device layout may differ). A workdir holding an
    unfinished run of another config is refused unless ``overwrite=True``, which removes that run's
    checkpoints (a finished one: ``workdir.check_finished_result``)."""
    saved = workdir / "config.json"
    same = True
    if saved.exists():
        diffs = workdir_lib.result_differences(json.loads(saved.read_text()), config_lib.to_dict(config))
        same = not diffs
        if diffs and not config.overwrite:
            raise config_lib.ConfigError(
                f"{workdir} holds a fine-tuning run with another config ({'; '.join(diffs[:3])}"
                f"{' …' if len(diffs) > 3 else ''}); use a new --workdir, or --config.overwrite=True to replace it")
    if is_lead_process():
        workdir.mkdir(parents=True, exist_ok=True)
        if not same:
            shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
            log(f"overwrite=True: removed the checkpoints of the earlier run in {workdir}")
        config_lib.save_config(config, workdir)
    return same


def _probe_summary(probe: dict, y, frozen_params: int, deploy: dict) -> dict:
    """deploy: what tljax.classifier saves besides the probe ("kind", "test_features", …)."""
    preds = probe["test_predictions"]
    return {"test_accuracy": float((preds == y["test"]).mean()), "test_predictions": preds,
            "validation_curve": probe["validation_curve"], "best_C": probe["best_C"],
            "trainable_params": probe["probe_parameters"], "frozen_params": frozen_params,
            "optimizer_state_bytes": 0, "forgetting": None, "self_training": probe["self_training"],
            # With CV the probe trains on the whole budget: nothing was held out for validation.
            "num_labeled": probe["trained_on"], "num_validation": int(len(y["train"]) + len(y["validation"])
                                                                     - probe["trained_on"]),
            "deploy": dict(deploy, probe=probe["probe"], test_ids=preds)}


def _run_word_vectors(config, data, y) -> dict:
    """Feature-based transfer from fixed word vectors: each text is the mean of its words' vectors."""
    from tljax import word2vec
    vectors = word2vec.load(config.init_from[4:] if config.init_from.startswith("w2v:") else config.init_from)
    feats = {name: word2vec.text_features(vectors, getattr(data, name).texts)
             for name in ("train", "validation", "test")}
    unlabeled = None
    if config.self_training.rounds:
        pool = unlabeled_pool(data.unlabeled, data.test.texts, config.self_training.max_unlabeled, config.seed)
        unlabeled = word2vec.text_features(vectors, pool)
    probe = fit_probe(config, feats, y, config.seed, data.extra_validation, unlabeled)
    return _probe_summary(probe, y, int(vectors.vectors.size),
                          {"kind": "word_vectors", "word_vectors": vectors, "test_features": feats["test"]})


def encoder_params(params: dict) -> dict:
    """A SequenceClassifier's params without its ``classifier`` head: the frozen encoder a probe reads."""
    return {k: v for k, v in params.items() if k != "classifier"}


def _hidden_features(config, model, params, pre: Pretrained, data, encoded, use_cache: bool
                     ) -> tuple[dict, np.ndarray | None]:
    """The frozen encoder's pooled features: ({"train", "validation", "test"} -> [N, H], the unlabeled
    pool's [U, H] when ``self_training.rounds``, else None), cached per text with ``use_cache``."""
    fn, feats = features_fn(model), {}  # one compiled function for every split
    encoder = encoder_params(params)
    key = [weights_digest(encoder), tok_lib.tokenizer_fingerprint(pre.tokenizer), model.pooling,
           str(config.data.max_len)] if use_cache else None
    for name, (ids, mask) in encoded.items():
        encode = lambda rows: extract_features(fn, params, ids[rows], mask[rows], model.cfg.hidden_size)
        feats[name] = (cached_features(key, getattr(data, name).texts, encode) if use_cache
                       else encode(np.arange(len(ids))))
    unlabeled = None
    if config.self_training.rounds:
        pool = unlabeled_pool(data.unlabeled, data.test.texts, config.self_training.max_unlabeled, config.seed)
        ids_u, mask_u = classify.encode_texts(pre.tokenizer, pool, config.data.max_len) if pool else (ids[:0], mask[:0])
        encode = lambda rows: extract_features(fn, params, ids_u[rows], mask_u[rows], model.cfg.hidden_size)
        unlabeled = cached_features(key, pool, encode) if use_cache else encode(np.arange(len(ids_u)))
    return feats, unlabeled


def _run_features(config, model, params, pre: Pretrained, data, encoded, y, use_cache: bool) -> dict:
    t0 = time.time()
    feats, unlabeled = _hidden_features(config, model, params, pre, data, encoded, use_cache)
    log(f"features {feats['train'].shape[1]}-d for {sum(len(f) for f in feats.values())} texts in {time.time() - t0:.1f}s")
    probe = fit_probe(config, feats, y, config.seed, data.extra_validation, unlabeled)
    encoder = encoder_params(params)
    deploy = {"kind": "probe", "params": encoder, "test_features": feats["test"], "batch_size": 128}
    return dict(_probe_summary(probe, y, count_params(encoder), deploy), feature_seconds=time.time() - t0)


def prompt_settings(config) -> ml_collections.ConfigDict:
    """The ``prompt`` node of a finetune config as ``tasks.prompt.label_scores`` reads it: the prompt with its
    typed escapes read (``\\n`` -> newline)."""
    settings = ml_collections.ConfigDict(config.prompt.to_dict())
    settings.prompt = prompt_lib.unescape(settings.prompt)
    return settings


def _prompt_verbalizer(config, pre: Pretrained, label_names: list[str]) -> prompt_lib.Verbalizer:
    """recipe=prompt_probe's checks before anything is written: a causal LM with its pretrained LM head, and a
    verbalizer entry for every label of the task. Returns the verbalizer. Raises ConfigError."""
    prompt_lib.check_causal_lm(pre, config.init_from, "recipe=prompt_probe")
    if not config.prompt.verbalizer:
        # No verbalizer given: each label is scored as its own name (labels are usually words); the probe
        # learns from the budget how much each score counts, so names need not be the best words.
        names = [str(name) for name in label_names]
        log(f"prompt_probe: no prompt.verbalizer given: each label is scored as its own name after a space "
            f"({', '.join(repr(' ' + n) for n in names)}); set --config.prompt.verbalizer to choose the words")
        return prompt_lib.make_verbalizer(names, [" " + n for n in names], pre.tokenizer)
    verbalizer = prompt_lib.parse_verbalizer(config.prompt.verbalizer, pre.tokenizer)
    missing = [name for name in label_names if name not in verbalizer.labels]
    if missing:
        raise config_lib.ConfigError(f"label(s) {missing[:5]} of the task have no entry in prompt.verbalizer "
                                     f"(it has {verbalizer.labels}); add them to --config.prompt.verbalizer")
    return verbalizer


def _run_prompt_probe(config, pre: Pretrained, verbalizer, data, y, hidden: tuple | None) -> dict:
    """recipe=prompt_probe: each text's features are its label scores [C] by prompting the causal LM
    (``tasks.prompt.label_scores``, C = the verbalizer's labels), then with ``prompt_probe.hidden`` the pooled
    hidden features [H] (``hidden`` = (model, params, encoded) of the features strategy); the probe and its C
    as for strategy=features (``fit_probe``: k-fold CV over the whole budget). The prompt scores are not
    cached: they depend on the prompt, and an experiment times its cells anyway."""
    t0 = time.time()
    settings = prompt_settings(config)
    scorer = prompt_lib.Scorer(pre.model, pre.params, pre.tokenizer, int(settings.batch_size))
    score = lambda texts: prompt_lib.label_scores(scorer, pre.tokenizer, settings, texts, verbalizer, "")
    scores = {name: score(getattr(data, name).texts) for name in ("train", "validation", "test")}
    pool = None
    if config.self_training.rounds:
        pool = unlabeled_pool(data.unlabeled, data.test.texts, config.self_training.max_unlabeled, config.seed)
    unlabeled_scores = score(pool) if pool is not None else None
    hidden_feats, unlabeled_hidden, encoder = {}, None, {}
    if hidden is not None:
        model, params, encoded = hidden
        hidden_feats, unlabeled_hidden = _hidden_features(config, model, params, pre, data, encoded, use_cache=False)
        encoder = encoder_params(params)
    feats = {name: prompt_lib.feature_matrix(s, hidden_feats.get(name)) for name, s in scores.items()}
    unlabeled = (prompt_lib.feature_matrix(unlabeled_scores, unlabeled_hidden) if unlabeled_scores is not None
                 else None)
    log(f"prompt_probe: {feats['train'].shape[1]}-d features ({len(verbalizer.labels)} label scores"
        f"{' + pooled hidden' if hidden is not None else ''}) for {sum(len(f) for f in feats.values())} texts "
        f"in {time.time() - t0:.1f}s")
    probe = fit_probe(config, feats, y, config.seed, data.extra_validation, unlabeled)
    # The reference: the raw scores' argmax (zero-shot), over the task's labels' columns.
    columns = [verbalizer.labels.index(name) for name in data.label_names]
    zero_shot = float((scores["test"][:, columns].argmax(1) == y["test"]).mean())
    log(f"prompt_probe: zero-shot accuracy of the raw scores {zero_shot:.4f}; probe C={probe['best_C']}")
    # The saved model scores new texts with the whole LM (its LM head) and, with hidden, the encoder.
    params = {**pre.params, **encoder}
    deploy = {"kind": "probe", "params": params, "test_features": feats["test"], "batch_size": 128,
              "prompt": {"prompt": settings.prompt, "labels": verbalizer.labels,
                         "continuations": verbalizer.continuations, "normalize": settings.normalize,
                         "max_len": int(settings.max_len), "batch_size": int(settings.batch_size),
                         "hidden": hidden is not None}}
    info = {"zero_shot_test_accuracy": zero_shot, "best_C": probe["best_C"], "cv_curve": probe["validation_curve"],
            "features": int(feats["train"].shape[1]), "hidden": hidden is not None,
            "verbalizer": dict(zip(verbalizer.labels, verbalizer.continuations)), "prompt": settings.prompt,
            "normalize": settings.normalize}
    return dict(_probe_summary(probe, y, count_params(pre.params), deploy), prompt_probe=info,
                feature_seconds=time.time() - t0)


def _linear_probe_head(config, model, start_params: dict, encoded, y, num_classes: int) -> tuple[dict, dict]:
    """LP-FT's first stage (Kumar et al. 2022): a logistic-regression probe on the frozen encoder's features of
    the training split (C by cross-validation on it), copied into the classifier head. Returns (start
    params with that head, {"best_C", "train_accuracy"})."""
    fn = features_fn(model)
    x = extract_features(fn, start_params, *encoded["train"], model.cfg.hidden_size)
    probe_cfg = ml_collections.ConfigDict({"probe": config.probe.to_dict()})
    probe_cfg.probe.kind = "logreg"
    if not probe_cfg.probe.cv_folds:
        probe_cfg.probe.cv_folds = 5  # the validation split stays for the fine-tuning stage's selection
    probe, _, c = select_probe(probe_cfg, x, y["train"], config.seed)
    params = dict(start_params)
    params["classifier"] = probe_head(probe, num_classes)
    acc = float(probe.score(x, y["train"]))
    log(f"lpft: linear probe (C={c}, train accuracy {acc:.3f}) is the head; fine-tuning from it at lr {config.train.lr}")
    return params, {"best_C": c, "train_accuracy": acc}


def _train_setfit_body(config, model, start_params, encoded, y, data, workdir, resume_allowed) -> tuple[dict, dict]:
    """SetFit's first stage on the engine: contrastive tuning of the encoder on pairs of the whole label budget
    (train + carved validation: a fixed schedule needs no validation), one pass over 2 x N x
    ``setfit.pair_iterations`` pairs, batch ``data.batch_size`` pairs, lr ``train.lr`` with 10 % warmup.
    Returns (tuned params, summary fields)."""
    labels = y["train"] if data.extra_validation else np.concatenate([y["train"], y["validation"]])
    ids = encoded["train"][0] if data.extra_validation else np.concatenate([encoded["train"][0], encoded["validation"][0]])
    mask = encoded["train"][1] if data.extra_validation else np.concatenate([encoded["train"][1], encoded["validation"][1]])
    pairs = contrastive.sample_pairs(labels, config.setfit.pair_iterations, config.seed)
    B = config.data.batch_size
    steps = -(-len(pairs) // B)
    train_cfg = ml_collections.ConfigDict(config.train.to_dict())
    train_cfg.update(steps=steps, warmup_steps=steps // 10)
    log(f"setfit: {len(pairs)} pairs ({len(labels)} labeled texts x 2 x {config.setfit.pair_iterations}), {steps} steps "
        f"of {B} pairs at lr {config.train.lr} (one pass: train.steps={config.train.steps} does not apply)")
    rules = policy.parse_rules(config.param_rules) + policy.strategy_rules(
        config.strategy, pre_layers(model), unfrozen_layers=config.unfrozen_layers,
        layer_lr_decay=config.layer_lr_decay, unfreeze_every=config.unfreeze_every)
    run = engine.setup(lambda r: model.init(r, ids[:1], mask[:1])["params"], train_cfg, config.mesh,
                       config.sharding_rules, config.seed, rules=rules, start_params=start_params)
    trainable, _ = run.counts()
    bs2, bs1 = run.batch_sharding(2), run.batch_sharding(1)
    step_fn = engine.compile_train_step(contrastive.train_loss(model), run, (bs2, bs2, bs2, bs2, bs1))
    put = lambda a: distributed.global_array(bs2 if a.ndim == 2 else bs1, a.shape, a.__getitem__)
    order = packing.PackedBatches(np.arange(len(pairs))[:, None], B, config.seed)

    def batch_for(s: int):
        rows = pairs[order.local_batch(s)[:, 0]]
        every = pairs[order.indices(s)]
        cols = classify.trimmed_length(np.concatenate([mask[every[:, 0]], mask[every[:, 1]]]))
        return (put(ids[rows[:, 0], :cols]), put(mask[rows[:, 0], :cols]), put(ids[rows[:, 1], :cols]),
                put(mask[rows[:, 1], :cols]), put(rows[:, 2].astype(np.float32)))

    t = config.train
    spec = engine.LoopSpec(total_steps=steps, log_every=t.log_every, eval_every=steps,
                           checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints)
    resume = engine.restore(run, workdir, select=False) if resume_allowed else None
    result = engine.fit(run, step_fn, batch_for, spec, workdir, desc="setfit body", resume=resume)
    return jax.tree.map(np.asarray, result.best_params), {
        "setfit_pairs": int(len(pairs)), "setfit_steps": steps, "body_trainable_params": trainable,
        "train_step_compilations": result.compilations, "steps_this_run": result.steps_this_run,
        "final_pair_loss": result.last_train.get("loss")}


def pre_layers(model: SequenceClassifier) -> int:
    return model.cfg.num_layers


def _run_gradient(config, model, start_params, pre: Pretrained, encoded, y, workdir, resume_allowed) -> dict:
    """Fine-tune on the engine (``build_gradient``): best-by-validation selection, early stopping,
    checkpoints and resume."""
    ids_tr, mask_tr = encoded["train"]
    built = build_gradient(config, model, start_params, pre.model.num_layers, ids_tr, mask_tr)
    run, step_fn, logits_fn, put = built.run, built.train_step, built.logits_fn, built.put
    start_params, merged = built.start_params, built.merged
    trainable, frozen = run.counts()
    opt_bytes = run.optimizer_bytes()
    log(f"{trainable:,} trainable / {frozen:,} frozen parameters; optimizer state {opt_bytes / 1e6:.2f} MB")
    for line in policy.describe(start_params, run.labels, run.plans):
        log(line)
    batch_sharding, vec_sharding = run.batch_sharding(2), run.batch_sharding(1)
    B = config.data.batch_size
    order = packing.PackedBatches(np.arange(len(y["train"]))[:, None], B, config.seed)

    def batch_for(s: int):
        idx = order.local_batch(s)[:, 0]
        # Every process cuts its rows to the same length: the global batch's trimmed length.
        cols = classify.trimmed_length(mask_tr[order.indices(s)])
        return put(ids_tr[idx, :cols]), put(mask_tr[idx, :cols]), put(y["train"][idx])

    has_validation = len(y["validation"]) > 0

    def evaluate(params) -> dict:
        preds, vloss = classify.predict(logits_fn, params, *encoded["validation"], y["validation"], B * 4, put)
        return {"accuracy": float((preds == y["validation"]).mean()), "loss": vloss}

    # Without a validation set there is nothing to select on: the last step is kept.
    resume = engine.restore(run, workdir, select=has_validation) if resume_allowed else None
    before = measure_forgetting = None
    # A checkpoint whose LM head was added fresh (e.g. a Hugging Face BertModel) has no pretraining loss
    # to forget: measuring it would report the loss of a random head.
    if config.forgetting.enabled and pre.params is not None and pre.config.get("lm_head_pretrained", True):
        measure_forgetting = pretraining_loss_fn(pre, config.forgetting.sequences, config.forgetting.batch_size)
        before = measure_forgetting(pre.params) if measure_forgetting else None

    longest = classify.trimmed_length(mask_tr)  # the widest batch training will see: its compilation is reused
    widest = [memory.global_batch_spec(a, B, s) for a, s in ((ids_tr[:, :longest], batch_sharding),
                                                (mask_tr[:, :longest], batch_sharding), (y["train"], vec_sharding))]
    t = config.train
    spec = engine.LoopSpec(total_steps=t.steps, log_every=t.log_every, eval_every=t.eval_every,
                           checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints,
                           select="accuracy" if has_validation else "", patience=t.patience)
    result = engine.fit(run, step_fn, batch_for, spec, workdir, evaluate=evaluate if has_validation else None,
                        desc=f"finetune {config.strategy}", batch_specs=widest, resume=resume)
    best_params = merged(result.best_params)  # plain kernels: what prediction, forgetting and export see
    param_sharding = {k: v for k, v in run.state_sharding.params.items() if k != lora.KEY}
    with shd.mesh_context(run.mesh, run.rules):
        test_logits = classify.batched_apply(logits_fn, jax.device_put(best_params, param_sharding),
                                             *encoded["test"], B * 4, put)
    preds = test_logits.argmax(-1)  # the test set is never empty (read_labeled refuses empty files)
    forgetting = None
    if before is not None:
        after = measure_forgetting(with_backbone(pre.params, best_params))
        if after is not None:
            forgetting = {"pretrain_loss_before": before, "pretrain_loss_after": after, "increase": after - before}
    curve = [{"step": c["step"], "accuracy": c["accuracy"], "loss": c["loss"], "train_loss": c["train_loss"]}
             for c in result.curve]
    return {"test_accuracy": float((preds == y["test"]).mean()), "test_predictions": preds,
            "validation_curve": curve, "best_step": result.best_step,
            "best_validation_accuracy": result.best_value if has_validation else 0.0,
            "trainable_params": trainable, "frozen_params": frozen, "optimizer_state_bytes": opt_bytes,
            **({"lora": built.lora} if built.lora else {}),
            "train_step_compilations": result.compilations, "forgetting": forgetting, "memory": result.memory,
            "steps_this_run": result.steps_this_run,
            "deploy": {"kind": "finetuned", "params": best_params, "test_ids": preds, "batch_size": B * 4,
                       "test_logits": test_logits}}
