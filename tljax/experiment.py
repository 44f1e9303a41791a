"""The learning-curve experiment: transfer vs training from scratch across label budgets.

One run = a grid of cells (method × label budget × seed); each cell is one ``finetune.run`` in
``workdir/cells/<method>/<labels>_s<seed>/``. A cell is finished when its ``summary.json`` exists, so
re-running the same command skips finished cells, and Ctrl-C or a crash loses at most the running cell.
The starting points are made first when not given: a tljax MLM checkpoint pretrained on the embedded
corpus (``workdir/pretrain``) and word2vec vectors (``workdir/word2vec``); MiniLM comes from its offline
package. Results: ``results.csv`` (one row per cell), ``results.md`` (mean ± std), ``learning_curve.png``
and a printed answer to the three claims of transfer learning (better predictions with few labels,
fewer labels needed, less training time). The cell loop (``run_cells``), a cell's fine-tuning config
(``finetune_cell_config``) and the starts are shared with the failure-modes grid (tljax/failures.py).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import ml_collections
import numpy as np

from tljax import config as config_lib
from tljax import finetune, pretrain, word2vec
from tljax.defaults import finetune_config as finetune_defaults
from tljax.data import labeled, sources
from tljax import workdir as workdir_lib
from tljax.utils import enable_compilation_cache, is_lead_process, log, write_json


@dataclasses.dataclass(frozen=True)
class Method:
    """One way to get a classifier: a starting point (``scratch`` | ``tljax`` | ``word2vec`` | ``minilm`` |
    ``smollm2``) and a ``tljax finetune`` strategy, or ``prompt`` (``tljax.zeroshot``: the causal LM scores
    each label's verbalizer; ``config.prompt.k_shot`` in-context examples from the cell's label budget)."""
    start: str
    strategy: str
    title: str
    layer_lr_decay: float = 1.0
    pooling: str = "auto"
    recipe: str = ""  # a few-shot recipe on top of the strategy (finetune's ``recipe``)
    self_training_rounds: int = 0


METHODS = {
    "scratch": Method("scratch", "full", "scratch (no pretraining)"),
    "word2vec": Method("word2vec", "features", "word2vec: mean vector + logreg"),
    "tljax_features": Method("tljax", "features", "tljax MLM: frozen features + logreg"),
    "tljax_light": Method("tljax", "light", "tljax MLM: light (top 2 layers + head)"),
    "tljax_full": Method("tljax", "full", "tljax MLM: full"),
    "tljax_progressive": Method("tljax", "progressive", "tljax MLM: progressive unfreezing"),
    "tljax_full_lld": Method("tljax", "full", "tljax MLM: full + layer-wise lr 0.8", layer_lr_decay=0.8),
    "minilm_features": Method("minilm", "features", "MiniLM: frozen features + logreg"),
    "minilm_light": Method("minilm", "light", "MiniLM: light (top 2 layers + head)"),
    "minilm_full": Method("minilm", "full", "MiniLM: full"),
    "smollm2_last": Method("smollm2", "features", "SmolLM2: last-token features + logreg", pooling="last"),
    "smollm2_mean": Method("smollm2", "features", "SmolLM2: mean features + logreg", pooling="mean"),
    "smollm2_lora": Method("smollm2", "lora", "SmolLM2: LoRA (q, v) + head"),
    "smollm2_prompt": Method("smollm2", "prompt", "SmolLM2: prompting (k-shot from the budget)"),
    "minilm_lpft": Method("minilm", "full", "MiniLM: LP-FT (probe, then full from its head)", recipe="lpft"),
    "minilm_setfit": Method("minilm", "full", "MiniLM: SetFit-style pairs + logreg", recipe="setfit"),
    "minilm_self_training": Method("minilm", "features", "MiniLM: features + logreg, self-trained",
                                   self_training_rounds=2),
    "minilm_setfit_st": Method("minilm", "full", "MiniLM: SetFit-style pairs + logreg, self-trained",
                               recipe="setfit", self_training_rounds=2),
    # The prompting method's label scores (config.prompt) as features of a logreg probe, C by CV.
    "smollm2_prompt_probe": Method("smollm2", "features", "SmolLM2: prompt label scores + logreg",
                                   recipe="prompt_probe"),
    # Task-adaptive pretraining (TAPT): more MLM on the task's unlabeled training texts, then full fine-tuning.
    "tljax_tapt": Method("tljax_tapt", "full", "tljax MLM + task-adaptive MLM: full"),
    "minilm_tapt": Method("minilm_tapt", "full", "MiniLM + task-adaptive MLM: full"),
}
# Starts made by continued MLM pretraining of another start on the task's training texts (make_tapt_start).
TAPT_BASES = {"tljax_tapt": "tljax", "minilm_tapt": "minilm"}
DECODER_METHODS = tuple(m for m in METHODS if m.startswith("smollm2"))
# What the default grid runs (the recipes are opt-in: --config.methods adds them).
DEFAULT_METHODS = tuple(m for m in METHODS if not METHODS[m].recipe and not METHODS[m].self_training_rounds
                        and METHODS[m].start not in TAPT_BASES)

CSV_FIELDS = ("method", "start", "strategy", "labels", "num_labeled", "labels_used", "num_train", "seed", "test_accuracy", "test_macro_f1",
              "forgetting", "trainable_params", "wall_seconds", "best_step", "steps")


def budget_name(budget: int) -> str:
    return "all" if budget == 0 else str(budget)


def validate(config) -> None:
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        hint = ("; several methods are a tuple: --config.methods=\"('minilm_full', 'smollm2_lora')\""
                if any("," in m for m in unknown) else "")
        raise config_lib.ConfigError(f"methods {unknown or '()'} unknown; choose from {', '.join(METHODS)}{hint}")
    if not config.budgets or any(int(b) < 0 for b in config.budgets) or len(set(config.budgets)) != len(config.budgets):
        raise config_lib.ConfigError(f"budgets={tuple(config.budgets)} must be distinct label counts ≥ 1, "
                                     "or 0 for all labels")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise config_lib.ConfigError(f"seeds={tuple(config.seeds)} must be distinct integers")
    few = tuple(config.get("few_label_seeds", ()))
    if len(set(few)) != len(few):
        raise config_lib.ConfigError(f"few_label_seeds={few} must be distinct integers (or () for seeds everywhere)")
    if few and int(config.get("few_label_max", 0)) <= 0:
        raise config_lib.ConfigError(f"few_label_max={config.get('few_label_max')} must be > 0: the largest budget "
                                     f"that runs few_label_seeds")
    if config.max_epochs <= 0:
        raise config_lib.ConfigError(f"max_epochs={config.max_epochs} must be > 0")
    config_lib.validate_finetune(config.finetune, prefix="finetune.")
    if "prompt" in config.finetune and config.finetune.prompt.to_dict() != finetune_defaults().prompt.to_dict():
        raise config_lib.ConfigError("finetune.prompt is set, but the experiment's prompt node decides the prompt "
                                     "of every prompting cell: set --config.prompt.* instead")
    if any(METHODS[m].start in TAPT_BASES for m in config.methods):
        tapt_source(config.finetune.data)  # a task without readable training texts fails here, not after hours
    if any(METHODS[m].strategy == "prompt" or METHODS[m].recipe == "prompt_probe" for m in config.methods):
        if "{text}" not in config.prompt.prompt or not config.prompt.verbalizer:
            raise config_lib.ConfigError("prompt.prompt needs a {text} placeholder and prompt.verbalizer a JSON "
                                         "object label -> continuation for the prompting methods")
        if int(config.prompt.k_shot) < 0:
            raise config_lib.ConfigError(f"prompt.k_shot={config.prompt.k_shot} must be >= 0")


def seeds_of(config, budget: int) -> tuple[int, ...]:
    """The seeds a label budget runs: ``few_label_seeds`` at budgets 1..``few_label_max`` when set (small
    budgets vary most from seed to seed), else ``seeds``."""
    few = tuple(config.get("few_label_seeds", ()))
    if few and 0 < budget <= int(config.few_label_max):
        return few
    return tuple(config.seeds)


# ----------------------------------------------------------------------------------------------------
# Starting points
# ----------------------------------------------------------------------------------------------------
def _costs_path(workdir: Path) -> Path:
    return workdir / "pretraining_costs.json"


def prepare_starts(config, workdir: Path) -> dict:
    """Resolve (pretraining or training where needed) every starting point the methods use.

    Returns {start: {"init_from": str, "wall_seconds": float | None, "note": str}}; the wall seconds are
    the one-off cost of making that start (None: made elsewhere, not measured here).
    """
    needed = {METHODS[m].start for m in config.methods}
    needed |= {TAPT_BASES[s] for s in needed if s in TAPT_BASES}
    costs = json.loads(_costs_path(workdir).read_text()) if _costs_path(workdir).exists() else {}
    starts = {}
    if needed & {"tljax", "scratch"}:
        starts["tljax"] = tljax_start(config.tljax, workdir, costs)
    if "word2vec" in needed:
        starts["word2vec"] = word2vec_start(config.word2vec, workdir, costs)
    if "minilm" in needed:
        starts["minilm"] = {"init_from": config.minilm.init_from, "wall_seconds": None,
                            "note": "pretrained by its authors (not measured here)"}
    if "smollm2" in needed:
        starts["smollm2"] = {"init_from": config.smollm2.init_from, "wall_seconds": None,
                             "note": "pretrained by its authors (not measured here)"}
    for name, base in TAPT_BASES.items():
        if name in needed:
            starts[name] = make_tapt_start(config, workdir, name, starts[base], costs)
    if is_lead_process():
        write_json(_costs_path(workdir), costs)
    return starts


def tljax_start(cfg, workdir: Path, costs: dict) -> dict:
    """The tljax MLM start: ``cfg.init_from`` if given, else pretrained by ``cfg.pretrain_config`` into
    ``workdir/pretrain`` (cost key "tljax")."""
    if cfg.init_from:
        summary = Path(cfg.init_from) / "summary.json"
        seconds = json.loads(summary.read_text()).get("wall_seconds") if summary.exists() else None
        return {"init_from": cfg.init_from, "wall_seconds": seconds, "note": f"given ({cfg.init_from})"}
    pcfg = config_lib.load_config_file(cfg.pretrain_config)
    if cfg.pretrain_steps:
        pcfg.train.steps = int(cfg.pretrain_steps)
    return pretrain_start(pcfg, workdir / "pretrain", "tljax", costs, what=cfg.pretrain_config)


def pretrain_start(pcfg, run_dir: Path, name: str, costs: dict, what: str) -> dict:
    """A start pretrained here by ``pcfg`` into ``run_dir`` (resumed, or reused when finished); its wall
    seconds add up over invocations in ``costs[name]``. Returns the start's {"init_from", "wall_seconds", "note"}."""
    log(f"pretraining the {name} starting point into {run_dir} ({what}, {pcfg.data.source}, "
        f"{pcfg.train.steps} steps); re-runs reuse it")
    summary = pretrain.run(pcfg, run_dir)
    if summary.get("steps_this_run"):  # resumed pretraining adds up over invocations
        costs[name] = costs.get(name, 0.0) + summary["wall_seconds"]
    return {"init_from": str(run_dir), "wall_seconds": costs.get(name),
            "note": f"pretrained here: {summary['steps']} steps, eval {pcfg.objective.upper()} loss "
                    f"{summary['eval_loss']:.3f} (unigram {summary['unigram_loss']:.3f})"}


def word2vec_start(cfg, workdir: Path, costs: dict) -> dict:
    """The word2vec start: ``cfg.init_from`` if given, else trained by ``cfg.config`` into ``workdir/word2vec``."""
    if cfg.init_from:
        return {"init_from": cfg.init_from, "wall_seconds": None, "note": f"given ({cfg.init_from})"}
    run_dir = workdir / "word2vec"
    if not (run_dir / "summary.json").exists():
        wcfg = config_lib.load_config_file(cfg.config)
        if cfg.epochs:
            wcfg.epochs = int(cfg.epochs)
        log(f"training word2vec vectors into {run_dir} ({cfg.config}, {wcfg.epochs} epochs)")
        t0 = time.time()
        word2vec.run(wcfg, run_dir)
        costs["word2vec"] = time.time() - t0
    return {"init_from": str(run_dir), "wall_seconds": costs.get("word2vec"), "note": "trained here"}


def tapt_source(finetune_data) -> str:
    """The pretraining source of the task's own unlabeled training texts: the text column of the labeled
    training file (``csv:`` / ``jsonl:``), or for the built-in Rotten Tomatoes its training reviews + plot
    synopses (``builtin:rotten_tomatoes_train_text``, which drops any validation or test text; likewise
    ``builtin:chinese_reviews_train_text``). Never the
    test split: only the training spec is read."""
    train_spec, _ = labeled.labeled_specs(finetune_data)
    kind, _, args = train_spec.partition(":")
    if kind == "builtin" and args.endswith("/train") and f"{args[:-len('/train')]}_train_text" in sources.TRAIN_TEXT:
        return f"builtin:{args[:-len('/train')]}_train_text"
    if kind in ("csv", "jsonl") and "@" not in args:
        return f"{kind}:{args}@{finetune_data.get('text_field', 'text') or 'text'}"
    raise config_lib.ConfigError(f"task-adaptive pretraining reads the training texts of a csv: or jsonl: file "
                                 f"(or the built-in Rotten Tomatoes); finetune.data.train={train_spec!r} is not one; "
                                 f"leave the *_tapt methods out")


def make_tapt_start(config, workdir: Path, name: str, base: dict, costs: dict, lr: float = 0.0) -> dict:
    """``base`` (a start) trained further with masked LM on the task's training texts (``tapt_source``) by
    ``config.tapt.config`` (configs/adapt_mlm.py), into ``workdir/<name>``; made once, reused (and resumed)
    by re-runs. Its cost adds the base's one-off cost to the adaptation's. lr > 0: the adaptation's peak
    rate instead of the file's (a tiny model pretrained at 2e-3 barely moves at MiniLM's 1e-4)."""
    run_dir = workdir / name
    pcfg = config_lib.load_config_file(config.tapt.config)
    pcfg.init_from = base["init_from"]
    pcfg.data.source = tapt_source(config.finetune.data)
    if config.tapt.steps:
        pcfg.train.steps = int(config.tapt.steps)
    if lr:
        pcfg.train.lr = float(lr)
    log(f"task-adaptive pretraining of {base['init_from']} on {pcfg.data.source} into {run_dir} "
        f"({pcfg.train.steps} steps); re-runs reuse it")
    summary = pretrain.run(pcfg, run_dir)
    if summary.get("steps_this_run"):
        costs[name] = costs.get(name, 0.0) + summary["wall_seconds"]
    seconds = costs.get(name)
    if seconds is not None and base.get("wall_seconds") is not None:
        seconds += base["wall_seconds"]
    return {"init_from": str(run_dir), "wall_seconds": seconds,
            "note": f"{base['init_from']} + {summary['steps']} MLM steps on the task's training texts: eval MLM "
                    f"loss {summary.get('init_eval_loss', float('nan')):.3f} -> {summary['eval_loss']:.3f} "
                    f"(head {summary.get('lm_head')})"}


# ----------------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cell:
    method: str
    budget: int  # labeled examples; 0 = all
    seed: int

    def dir(self, workdir: Path) -> Path:
        return workdir / "cells" / self.method / f"{budget_name(self.budget)}_s{self.seed}"

    def describe(self) -> str:
        return f"{self.method}, {budget_name(self.budget)} labels, seed {self.seed}"


def cell_config(config, cell: Cell, starts: dict, num_all: int) -> ml_collections.ConfigDict:
    """The ``finetune.run`` config of one cell: ``config.finetune`` + the method, budget and seed."""
    method = METHODS[cell.method]
    if method.strategy == "prompt":
        return prompt_config(config, cell, starts)
    lr = float(config.lr[method.start]) if method.start in config.lr else config.finetune.train.lr
    if method.recipe in ("lpft", "setfit"):  # each recipe has its own rate (LP-FT: small; SetFit: its body rate)
        lr = float(config.lr.get(method.recipe, lr))
    scratch = method.start == "scratch"
    c = finetune_cell_config(config, method.strategy, cell.budget, cell.seed, lr, num_all,
                             init_from="none" if scratch else starts[method.start]["init_from"],
                             model_like=starts["tljax"]["init_from"] if scratch else None,
                             layer_lr_decay=method.layer_lr_decay, pooling=method.pooling)
    # The prompt settings: the experiment's prompt node, for prompt_probe cells only.
    if method.recipe == "prompt_probe":
        c.prompt.update({k: config.prompt[k] for k in c.prompt})
    else:
        c.prompt_probe = finetune_defaults().prompt_probe
    c.recipe, c.self_training.rounds = method.recipe, method.self_training_rounds
    return c


def finetune_cell_config(config, strategy: str, budget: int, seed: int, lr: float, num_all: int, init_from: str,
                         model_like: str | None = None, layer_lr_decay: float = 1.0,
                         pooling: str = "auto") -> ml_collections.ConfigDict:
    """``config.finetune`` made into one cell's ``finetune.run`` config (shared by the experiments).

    Steps: at most ``finetune.train.steps``, and no more than ``config.max_epochs`` passes over the training
    part of the budget (100 labels do not need 300 steps); at least two evaluations."""
    c = ml_collections.ConfigDict(config.finetune.to_dict())
    c.strategy, c.seed, c.layer_lr_decay = strategy, seed, layer_lr_decay
    # A cell's model/ costs disk (MiniLM: ~90 MB per cell); kept only where the user asks.
    c.save_model = bool(config.get("keep_models", False))
    if pooling != "auto":
        c.pooling = pooling
    if strategy != "lora":  # the adapters' settings belong to LoRA cells only
        c.lora = finetune_defaults().lora
    c.prompt = finetune_defaults().prompt
    c.data.num_labeled = budget
    c.init_from = init_from
    if model_like is not None:
        c.model_like = model_like
    c.train.lr = float(lr)
    # Epochs count passes over the training part of the budget (the validation carve-out does not train).
    n = budget or num_all
    n = max(1, n - int(round(n * c.data.validation_fraction)))
    by_epochs = math.ceil(config.max_epochs * n / c.data.batch_size)
    c.train.steps = int(min(c.train.steps, max(2 * c.train.eval_every, by_epochs)))
    c.train.warmup_steps = int(min(c.train.warmup_steps, c.train.steps // 10))
    c.train.checkpoint_every = 0  # an interrupted cell starts over: checkpoints would only cost disk and time
    return c


def prompt_config(config, cell: Cell, starts: dict) -> ml_collections.ConfigDict:
    """The ``tljax.zeroshot`` config of a prompting cell plus the ``model`` and test ``data`` it scores.
    With ``k_shot`` = 0 no label is used: budget and seed do not enter the config, so every such cell is one
    result (computed once, copied to the others)."""
    from tljax.data import labeled as labeled_data
    from tljax.defaults import zeroshot_config
    train_spec, test_spec = labeled_data.labeled_specs(config.finetune.data)
    z = zeroshot_config()
    p = config.prompt
    z.update(prompt=p.prompt, verbalizer=p.verbalizer, k_shot=int(p.k_shot), normalize=p.normalize,
             max_len=int(p.max_len), batch_size=int(p.batch_size), limit=int(p.limit),
             text_field=config.finetune.data.text_field, label_field=config.finetune.data.label_field)
    if z.k_shot:
        z.update(train=train_spec, num_labeled=cell.budget, seed=cell.seed)
    z.model, z.data = starts[METHODS[cell.method].start]["init_from"], test_spec
    return z


def _run_prompt_cell(cfg, cell_dir: Path, num_labeled: int) -> dict:
    """Score the cell's test set by prompting; its summary gets the fields of a fine-tuning cell's."""
    from tljax import zeroshot
    fields = cfg.to_dict()
    model, data = fields.pop("model"), fields.pop("data")
    z = ml_collections.ConfigDict(fields)
    summary = zeroshot.run(z, model, data, cell_dir)
    summary.update(test_accuracy=summary["accuracy"], test_macro_f1=summary["macro_f1"], num_labeled=num_labeled,
                   labels_used=summary["k_shot"], trainable_params=0, forgetting=None, best_step=None)
    if is_lead_process():
        config_lib.save_config(cfg, cell_dir)
        write_json(cell_dir / "summary.json", summary)
    return summary


def finished_cells(cells: list, workdir: Path) -> dict:
    """{cell: its summary} of the cells whose ``summary.json`` exists (read once: the ETA follows this dict)."""
    return {c: s for c in cells if (s := _read_summary(c.dir(workdir))) is not None}


def run_cells(cells: list, workdir: Path, config_of, run_cell, after_cell, finished: dict | None = None) -> dict:
    """The resumable loop over a grid's cells, shared by the experiments.

    cells: in run order, each with ``.dir(workdir)``, ``.method`` (the ETA's group: cells of one method cost
    alike) and ``.describe()``. A cell whose ``summary.json`` exists is finished and not run again, unless its
    saved config differs from ``config_of(cell)`` (ConfigError naming the fields); an unfinished cell's folder
    (an interrupted run) is removed and the cell run by ``run_cell(cell, cfg, cell_dir, finished) -> summary``.
    ``after_cell(cell, cfg, summary, ran)`` follows every cell, run now or earlier. Returns {cell: summary}."""
    finished = finished_cells(cells, workdir) if finished is None else finished
    seconds_by_method: dict[str, list[float]] = {}
    for cell, summary in finished.items():
        seconds_by_method.setdefault(cell.method, []).append(summary["wall_seconds"])
    for k, cell in enumerate(cells, 1):
        cell_dir = cell.dir(workdir)
        cfg = config_of(cell)
        summary = finished.get(cell)
        if summary is not None and (diffs := _differences(cell_dir, cfg, workdir)):
            raise config_lib.ConfigError(
                f"cell {cell_dir} was run with other settings ({'; '.join(diffs[:3])}); use a new --workdir, "
                f"or delete that cell folder to re-run it")
        ran = summary is None
        if ran:
            pending = [c for c in cells[k - 1:] if c not in finished]
            log(f"[cell {k}/{len(cells)}] {cell.describe()} ({_eta(pending, seconds_by_method)})")
            if cell_dir.exists():  # a cell interrupted earlier: start it over
                shutil.rmtree(cell_dir)
            summary = finished[cell] = run_cell(cell, cfg, cell_dir, finished)
            seconds_by_method.setdefault(cell.method, []).append(summary["wall_seconds"])
        after_cell(cell, cfg, summary, ran)
    return finished


def _read_summary(cell_dir: Path) -> dict | None:
    try:
        return json.loads((cell_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _differences(cell_dir: Path, cfg, workdir: Path) -> list[str]:
    """``field: saved -> current`` for every setting of a finished cell that the current config changes.

    A start made inside the workdir (``workdir/pretrain``, ``workdir/word2vec``, …) is named through the
    workdir as the command spelled it, so a moved workdir, or one given as an absolute instead of a relative
    path, names the same start differently: such a path counts as unchanged when the saved one ends with the
    same components below the workdir."""
    saved = workdir_lib.result_settings(json.loads((cell_dir / "config.json").read_text()))
    current = workdir_lib.result_settings(config_lib.to_dict(cfg))
    root = Path(workdir).absolute()
    for key, value in current.items():
        old = saved.get(key)
        if not (isinstance(value, str) and isinstance(old, str)) or old == value or not value:
            continue
        try:
            below = Path(value).absolute().relative_to(root).parts
        except ValueError:  # not a path inside the workdir
            continue
        if below and Path(old).parts[-len(below):] == below:
            saved[key] = value
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]


def _row(cell: Cell, summary: dict, steps: int) -> dict:
    method = METHODS[cell.method]
    forgetting = (summary.get("forgetting") or {}).get("increase")
    return {"method": cell.method, "start": method.start, "strategy": method.strategy,
            "labels": budget_name(cell.budget), "num_labeled": summary.get("labels_used", summary["num_labeled"]),
            "labels_used": summary.get("labels_used", ""), "num_train": summary["num_labeled"], "seed": cell.seed,
            "test_accuracy": summary["test_accuracy"], "test_macro_f1": summary["test_macro_f1"],
            "forgetting": "" if forgetting is None else forgetting,
            "trainable_params": summary["trainable_params"], "wall_seconds": summary["wall_seconds"],
            "best_step": summary.get("best_step") or "", "steps": summary.get("setfit_steps", steps)}


def format_seconds(s: float) -> str:
    """Seconds as "1h02m" or "3m05s"."""
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _eta(pending: list[Cell], seconds_by_method: dict[str, list[float]]) -> str:
    """Remaining time: each pending cell costs its method's mean so far (the overall mean if none)."""
    everything = [s for v in seconds_by_method.values() for s in v]
    if not everything:
        return "eta ?"
    mean = float(np.mean(everything))
    total = sum(float(np.mean(seconds_by_method[c.method])) if seconds_by_method.get(c.method) else mean
                for c in pending)
    return f"eta {format_seconds(total)}"


def locked_run(config, workdir: str | Path, validate_config, body) -> dict:
    """What every experiment does around its grid: the config checked first, the workdir locked, the
    config saved (process 0), compilations kept on disk (cells of one method and budget compile the same
    step for every seed); then ``body(config, workdir Path)``."""
    validate_config(config)
    with workdir_lib.locked(workdir):
        workdir = Path(workdir)
        if is_lead_process():
            config_lib.save_config(config, workdir)
        enable_compilation_cache()
        return body(config, workdir)


def run(config, workdir: str | Path) -> dict:
    """Run (or resume) the grid into ``workdir``; write results.csv / results.md / learning_curve.png and
    return {"rows": [...], "claims": {...}}. The config is checked first; the workdir is locked for the run."""
    return locked_run(config, workdir, validate, _run)


def _run(config, workdir: Path) -> dict:
    t_start = time.time()
    starts = prepare_starts(config, workdir)
    # The size of "all": every training label (validation is carved out of it, as out of every budget).
    num_all = labeled.load_labeled(dict(config.finetune.data, num_labeled=0), 0).labels_used

    cells = [Cell(m, int(b), int(s)) for b in sorted(config.budgets, key=lambda b: b or math.inf)
             for m in config.methods for s in seeds_of(config, int(b))]
    finished = finished_cells(cells, workdir)
    few = tuple(config.get("few_label_seeds", ()))
    seeds_text = (f"seeds {tuple(config.seeds)}, {few} at ≤ {config.few_label_max} labels" if few
                  else f"{len(config.seeds)} seeds")
    log(f"experiment: {len(cells)} cells ({len(config.methods)} methods × {len(config.budgets)} label budgets, "
        f"{seeds_text}), {len(finished)} already done; 'all' = {num_all} labels")

    rows = []

    def run_cell(cell: Cell, cfg, cell_dir: Path, finished: dict) -> dict:
        if METHODS[cell.method].strategy != "prompt":
            # No feature cache: a cell's wall seconds must not depend on which cells ran before it.
            return finetune.run(cfg, cell_dir, feature_cache=False)
        same = next((c for c in finished if METHODS[c.method].strategy == "prompt" and c.method == cell.method
                     and not _differences(c.dir(workdir), cfg, workdir)), None)
        if same is None:
            return _run_prompt_cell(cfg, cell_dir, cell.budget or num_all)
        # zero-shot: the budget and seed do not enter the result; the cell is the earlier one's
        shutil.copytree(same.dir(workdir), cell_dir)
        summary = dict(finished[same], num_labeled=cell.budget or num_all)
        write_json(cell_dir / "summary.json", summary)
        return summary

    def after_cell(cell: Cell, cfg, summary: dict, ran: bool) -> None:
        rows.append(_row(cell, summary, 0 if METHODS[cell.method].strategy == "prompt" else cfg.train.steps))
        if ran:  # after every cell run, so a crash keeps them all; cells finished earlier add no rewrite
            write_results(rows, starts, config, workdir)

    run_cells(cells, workdir, lambda cell: cell_config(config, cell, starts, num_all), run_cell, after_cell,
              finished)

    claims = write_results(rows, starts, config, workdir)
    log("\n" + claims_text(claims))
    log(f"results: {workdir}/results.csv, results.md, learning_curve.png "
        f"({format_seconds(time.time() - t_start)} this invocation)")
    return {"rows": rows, "claims": claims}


# ----------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------
def write_results(rows: list[dict], starts: dict, config, workdir: Path) -> dict:
    """results.csv, results.md, learning_curve.png and claims.json from the rows so far; returns the claims."""
    claims = answer_claims(rows, starts)
    if is_lead_process():
        write_csv(rows, workdir / "results.csv")
        (workdir / "results.md").write_text(results_markdown(rows, claims, starts, config))
        plot_learning_curve(rows, workdir / "learning_curve.png")
        write_json(workdir / "claims.json", claims)
    return claims


def write_csv(rows: list[dict], path: Path, fields: tuple[str, ...] = CSV_FIELDS) -> None:
    """``rows`` as CSV with the columns ``fields``, replacing ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def merge_rows(csv_paths: list[str | Path], read_rows, key) -> list[dict]:
    """The rows of several runs' ``results.csv`` (``read_rows(path)`` each), e.g. a grid run in slices, one
    invocation per session. A cell in two files (same ``key(row)``) is an error: which to keep is the user's."""
    rows, seen = [], {}
    for path in csv_paths:
        for r in read_rows(path):
            k = key(r)
            if k in seen:
                raise config_lib.ConfigError(f"cell {k} is in both {seen[k]} and {path}; keep one of them")
            seen[k] = path
            rows.append(r)
    return rows


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a learning-curve ``results.csv`` as written (numbers stay strings: the tables convert
    what they use); a column missing or a method this version does not know is an error."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [k for k in CSV_FIELDS if rows and k not in rows[0]]
    if missing:
        raise config_lib.ConfigError(f"{path} is not a learning-curve results.csv (no column {missing[0]!r})")
    unknown = sorted({r["method"] for r in rows} - set(METHODS))
    if unknown:
        raise config_lib.ConfigError(f"{path}: method {unknown[0]!r} is not one of tljax/experiment.py's METHODS")
    return rows


def report(config, csv_paths: list[str | Path], out_dir: str | Path) -> dict:
    """results.csv / results.md / learning_curve.png / claims.json of the rows of several runs'
    ``results.csv`` files into ``out_dir`` (scripts/experiment_report.py); returns the claims. The
    starting points' one-off costs are not in the rows, so the claims leave them out."""
    rows = merge_rows(csv_paths, read_rows, lambda r: (r["method"], r["labels"], str(r["seed"])))
    config = ml_collections.ConfigDict(config.to_dict())
    config.methods = tuple(dict.fromkeys([*config.methods, *(r["method"] for r in rows)]))  # none dropped
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_results(rows, {}, config, out)


def aggregate(rows: list[dict], field: str = "test_accuracy",
              key=lambda r: (r["method"], r["labels"])) -> dict[tuple, tuple[float, float, int]]:
    """{key(row), by default (method, labels): (mean, std over seeds, number of seeds)} of ``field`` (rows
    without it, "" or None, skipped)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r[field] not in ("", None):
            groups.setdefault(key(r), []).append(float(r[field]))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()}


def budget_order(labels: list[str]) -> list[str]:
    """The distinct budget names, smallest first, "all" last."""
    return sorted(set(labels), key=lambda b: math.inf if b == "all" else int(b))


def answer_claims(rows: list[dict], starts: dict) -> dict:
    """The seed's three claims, answered from the rows (means over seeds).

    - better predictions: test accuracy at the smallest budget, scratch vs the best transfer method;
    - smaller datasets: the smallest budget at which some transfer method's accuracy reaches what scratch
      reaches with all labels (or its largest budget), and the label ratio;
    - less training time: the fastest transfer cell (fine-tuning wall seconds, the pretrained start being
      reused) reaching scratch's best accuracy, vs the scratch cell that reached it; plus the one-off cost
      of making each start.
    """
    acc = aggregate(rows)
    secs = aggregate(rows, "wall_seconds")
    budgets = budget_order([r["labels"] for r in rows])
    n_of = {r["labels"]: int(r["num_labeled"]) for r in rows}
    transfer = sorted({r["method"] for r in rows} - {"scratch"})
    out: dict = {"budgets": budgets, "pretraining_seconds": {k: v["wall_seconds"] for k, v in starts.items()}}
    # Budgets where scratch and some transfer method both have results (a grid in progress has gaps).
    shared = [b for b in budgets if ("scratch", b) in acc and any((m, b) in acc for m in transfer)]
    if not shared:
        out["note"] = "the claims need results of the scratch method and a transfer method at one budget"
        return out

    small = shared[0]
    best_small = max((m for m in transfer if (m, small) in acc), key=lambda m: acc[(m, small)][0])
    out["better_predictions"] = {"labels": small, "scratch": acc[("scratch", small)][0],
                                 "best_method": best_small, "best": acc[(best_small, small)][0]}

    scratch_budget = max((b for b in budgets if ("scratch", b) in acc), key=lambda b: n_of[b])
    target = acc[("scratch", scratch_budget)][0]
    # The fewest labels first; among methods reaching it there, the most accurate.
    reached = [(n_of[b], -acc[(m, b)][0], b, m) for b in budgets for m in transfer
               if acc.get((m, b), (-1,))[0] >= target]
    smaller = {"scratch_labels": scratch_budget, "scratch_accuracy": target}
    if reached:
        n, _, b, m = min(reached)
        smaller.update(labels=b, method=m, accuracy=acc[(m, b)][0], label_ratio=n_of[scratch_budget] / n)
    out["smaller_datasets"] = smaller

    best_scratch_budget = max((b for b in budgets if ("scratch", b) in acc), key=lambda b: acc[("scratch", b)][0])
    best_scratch = acc[("scratch", best_scratch_budget)][0]
    faster = {"scratch_accuracy": best_scratch, "scratch_labels": best_scratch_budget,
              "scratch_seconds": secs[("scratch", best_scratch_budget)][0]}
    hits = [(secs[(m, b)][0], m, b) for b in budgets for m in transfer
            if acc.get((m, b), (-1,))[0] >= best_scratch and (m, b) in secs]
    if hits:
        s, m, b = min(hits)
        faster.update(method=m, labels=b, seconds=s, speedup=faster["scratch_seconds"] / s)
    out["less_training_time"] = faster
    return out


def claims_text(claims: dict) -> str:
    """A few plain lines answering the three claims."""
    if "note" in claims:
        return claims["note"]
    bp, sd, lt = claims["better_predictions"], claims["smaller_datasets"], claims["less_training_time"]
    lines = [f"better predictions: with {bp['labels']} labels scratch reaches {bp['scratch']:.3f}, the best "
             f"transfer method ({METHODS[bp['best_method']].title}) {bp['best']:.3f} "
             f"({bp['best'] - bp['scratch']:+.3f})."]
    if "labels" in sd:
        lines.append(f"smaller datasets: scratch with {sd['scratch_labels']} labels reaches "
                     f"{sd['scratch_accuracy']:.3f}; {METHODS[sd['method']].title} matches it with "
                     f"{sd['labels']} labels ({sd['label_ratio']:.0f}× fewer).")
    else:
        lines.append(f"smaller datasets: no transfer method reaches scratch's {sd['scratch_accuracy']:.3f} "
                     f"({sd['scratch_labels']} labels) at any budget.")
    if "method" in lt:
        lines.append(f"less training time: scratch needs {lt['scratch_seconds']:.0f} s ({lt['scratch_labels']} "
                     f"labels) for {lt['scratch_accuracy']:.3f}; {METHODS[lt['method']].title} reaches it in "
                     f"{lt['seconds']:.0f} s of fine-tuning ({lt['labels']} labels), "
                     + (f"{lt['speedup']:.1f}× faster." if lt["speedup"] >= 1 else f"{1 / lt['speedup']:.1f}× slower."))
    else:
        lines.append(f"less training time: no transfer cell reaches scratch's best {lt['scratch_accuracy']:.3f}.")
    costs = ", ".join(f"{k} {format_seconds(v)}" if v is not None else f"{k} not measured here"
                      for k, v in claims["pretraining_seconds"].items())
    if costs:  # (results rebuilt from results.csv files have no starts)
        lines.append(f"one-off cost of the starting points: {costs}.")
    return "\n".join(lines)


def cell_text(stat: tuple[float, float, int] | None, digits: int = 3, signed: bool = False) -> str:
    """A table cell of (mean, std, n): "0.700 ± 0.020" (no ± for one seed), "–" for none."""
    if stat is None:
        return "–"
    mean, std, n = stat
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return fmt.format(mean) + (f" ± {std:.{digits}f}" if n > 1 else "")


def results_markdown(rows: list[dict], claims: dict, starts: dict, config) -> str:
    """Tables (mean ± std over seeds) of test accuracy, macro-F1, forgetting and wall seconds, and the claims."""
    budgets = budget_order([r["labels"] for r in rows])
    n_of = {r["labels"]: int(r["num_labeled"]) for r in rows}
    methods = [m for m in config.methods if any(r["method"] == m for r in rows)]
    seeds = sorted({int(r["seed"]) for r in rows})
    head = [f"{b} ({n_of[b]:,})" if b == "all" else b for b in budgets]

    def table(field: str, title: str, digits: int = 3, signed: bool = False, only=None) -> list[str]:
        stats = aggregate(rows, field)
        shown = [m for m in methods if (only is None or m in only) and any((m, b) in stats for b in budgets)]
        if not shown:
            return []
        out = [f"**{title}**", "", "| method | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(budgets)]
        out += [f"| {METHODS[m].title} | " + " | ".join(cell_text(stats.get((m, b)), digits, signed) for b in budgets)
                + " |" for m in shown]
        return out + [""]

    lines = [f"# Learning curve: {config.finetune.data.train or config.finetune.data.name or 'rotten_tomatoes'}", "",
             f"Test accuracy by label budget; mean ± std over seeds {seeds}. The budget is every label a cell "
             f"read: validation for early stopping and model selection came out of it "
             f"({validation_note(config.finetune.data)}).", ""]
    lines += table("test_accuracy", "Test accuracy")
    lines += table("test_macro_f1", "Macro-F1")
    lines += table("forgetting", "Forgetting: increase of the pretraining objective's loss (masked or causal LM) on held-out text", signed=True)
    lines += table("wall_seconds", "Wall seconds per cell (fine-tuning only)", digits=0)
    lines += ["**Starting points**", ""]
    lines += [f"- {k}: {v['init_from']} — {v['note']}" +
              (f", {format_seconds(v['wall_seconds'])}" if v["wall_seconds"] is not None else "")
              for k, v in starts.items()]
    lines += ["", "**The claims**", ""] + [f"- {line}" for line in claims_text(claims).splitlines()] + [""]
    return "\n".join(lines)


def validation_note(data_cfg) -> str:
    """Where each cell's validation labels came from, in words (the budget rule)."""
    if data_cfg.get("validation", ""):
        return f"no carve-out: extra labeled validation from {data_cfg.validation} was used on top of each budget"
    return (f"a stratified {data_cfg.validation_fraction:.0%} of it, at most {data_cfg.max_validation}; probes chose "
            f"C by cross-validation over the whole budget; no extra labels")


def plot_learning_curve(rows: list[dict], path: Path) -> None:
    """Test accuracy vs labels (log x), one line per method with ± std error bars, saved as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = aggregate(rows)
    budgets = budget_order([r["labels"] for r in rows])
    n_of = {r["labels"]: int(r["num_labeled"]) for r in rows}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = [(n_of[b], *acc[(m, b)][:2]) for b in budgets if (m, b) in acc]
        x, y, e = zip(*pts)
        style = dict(color="black", linewidth=2.5) if m == "scratch" else {}
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=METHODS[m].title,
                    linestyle="--" if METHODS[m].strategy == "features" else "-", **style)
    ax.set_xscale("log")
    ax.set_xticks([n_of[b] for b in budgets], [f"{n_of[b]:,}" + (" (all)" if b == "all" else "") for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labeled training examples")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
