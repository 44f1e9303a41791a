"""The failure-modes experiment: four ways transfer goes wrong, measured on one task (Rotten Tomatoes).

1. domain mismatch and its remedy: the same tiny BERT pretrained for the same steps on out-of-domain text
   (the embedded corpus) or on the task's unlabeled training texts, out-of-domain + task-adaptive MLM
   (TAPT), MiniLM with and without TAPT; fine-tuned at a few label budgets;
2. catastrophic forgetting: the pretraining loss on held-out general text before/after fine-tuning, per
   strategy and learning rate, beside the task accuracy;
3. too high a learning rate: a sweep for full, layer-wise-decayed and light fine-tuning; accuracy,
   training-loss curves and where predictions collapse to one class;
4. poor feature extraction: frozen features of a causal LM vs a masked LM of the same size and compute,
   and word2vec vs contextual features on the test texts where negation decides;
5. language mismatch (``language``): English-pretrained models (the tiny BERT, MiniLM) fine-tuned on Chinese
   reviews (``builtin:chinese_reviews``), against the same tiny BERT pretrained on the Chinese training
   texts with its own tokenizer, and scratch with that tokenizer.

The grid is the learning curve's (``experiment.run_cells``): every cell is one ``finetune.run`` in
``workdir/cells/<variant>/<budget>[_lr<lr>]_s<seed>/``, finished when its ``summary.json`` exists; a cell
asked for by two parts runs once. Starting points are made first (``workdir/pretrain``, ``pretrain_indomain``,
``pretrain_gpt``, ``pretrain_zh``, ``bert_ood_tapt``, ``minilm_tapt``, ``word2vec``) and reused. Outputs:
``results.csv`` (one row per cell), ``results.md`` (a table per part), ``mismatch.png``, ``forgetting.png``,
``lr_sweep.png``, ``features.png``, ``language.png`` and a printed reading per failure.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import time
from pathlib import Path

import ml_collections
import numpy as np

from tljax import config as config_lib
from tljax import engine, experiment, finetune
from tljax.data import labeled
from tljax.utils import is_lead_process, log, write_json


@dataclasses.dataclass(frozen=True)
class Variant:
    """A starting point and how it is fine-tuned. start: ``scratch`` | ``bert_ood`` (tiny BERT, MLM on the
    embedded corpus) | ``bert_indomain`` (the same, on the task's training texts) | ``bert_ood_tapt`` |
    ``minilm`` | ``minilm_tapt`` | ``gpt`` (tiny GPT, CLM on the corpus, the BERT's size) | ``word2vec`` |
    ``bert_zh`` (the tiny BERT's recipe on the Chinese reviews' training texts, its own tokenizer).
    data: a built-in labeled set fine-tuned on instead of ``config.finetune.data`` ("" = that);
    like: for scratch, the start whose architecture and tokenizer it takes."""
    start: str
    strategy: str
    title: str
    layer_lr_decay: float = 1.0
    pooling: str = "auto"
    data: str = ""
    like: str = "bert_ood"


VARIANTS = {
    "scratch": Variant("scratch", "full", "scratch (no pretraining)"),
    "bert_ood": Variant("bert_ood", "full", "tiny BERT, out-of-domain MLM: full"),
    "bert_indomain": Variant("bert_indomain", "full", "tiny BERT, in-domain MLM: full"),
    "bert_ood_tapt": Variant("bert_ood_tapt", "full", "tiny BERT, out-of-domain MLM + TAPT: full"),
    "bert_full_lld": Variant("bert_ood", "full", "tiny BERT: full + layer-wise lr 0.8", layer_lr_decay=0.8),
    "bert_light": Variant("bert_ood", "light", "tiny BERT: light (top 2 layers + head)"),
    "bert_lora": Variant("bert_ood", "lora", "tiny BERT: LoRA (q, v) + head"),
    "bert_progressive": Variant("bert_ood", "progressive", "tiny BERT: progressive unfreezing"),
    "bert_features": Variant("bert_ood", "features", "tiny BERT (MLM): frozen mean features + logreg"),
    "gpt_features": Variant("gpt", "features", "tiny GPT (CLM): frozen last-token features + logreg"),
    "gpt_features_mean": Variant("gpt", "features", "tiny GPT (CLM): frozen mean features + logreg",
                                 pooling="mean"),
    "word2vec": Variant("word2vec", "features", "word2vec: mean vector + logreg"),
    "minilm": Variant("minilm", "full", "MiniLM: full"),
    "minilm_tapt": Variant("minilm_tapt", "full", "MiniLM + TAPT: full"),
    "minilm_full_lld": Variant("minilm", "full", "MiniLM: full + layer-wise lr 0.8", layer_lr_decay=0.8),
    "minilm_light": Variant("minilm", "light", "MiniLM: light (top 2 layers + head)"),
    "minilm_features": Variant("minilm", "features", "MiniLM: frozen mean features + logreg"),
    # Fine-tuned on the Chinese reviews: English-pretrained starts vs a Chinese-pretrained one and scratch
    "scratch_zh": Variant("scratch", "full", "zh: scratch (Chinese tokenizer, no pretraining)",
                          data="chinese_reviews", like="bert_zh"),
    "bert_ood_zh": Variant("bert_ood", "full", "zh: tiny BERT, English MLM: full", data="chinese_reviews"),
    "bert_zh": Variant("bert_zh", "full", "zh: tiny BERT, Chinese MLM: full", data="chinese_reviews"),
    "minilm_zh": Variant("minilm", "full", "zh: MiniLM (English): full", data="chinese_reviews"),
}
PARTS = ("mismatch", "forgetting", "lr_sweep", "features", "language")
TAPT_BASES = {"bert_ood_tapt": "bert_ood", "minilm_tapt": "minilm"}
# Words that make a review's sentiment depend on context ("not good"); matched whole, case-blind, with
# n't as a word ending (straight or typographic apostrophe).
NEGATION = re.compile(r"\b(not|no|never|cannot)\b|n['’]t\b", re.IGNORECASE)

CSV_FIELDS = ("method", "start", "strategy", "layer_lr_decay", "labels", "num_labeled", "lr", "seed", "parts",
              "test_accuracy", "test_macro_f1", "negation_accuracy", "negation_count", "majority_share", "majority_class_accuracy",
              "collapsed", "diverged", "forgetting", "pretrain_loss_before", "pretrain_loss_after",
              "trainable_params", "wall_seconds", "best_step", "steps")


@dataclasses.dataclass(frozen=True)
class Cell:
    method: str  # a VARIANTS name (the ETA groups cells by it)
    budget: int  # labeled examples, validation included; 0 = all
    lr: float  # peak learning rate; 0 for probes (features: no gradient training)
    seed: int

    def dir(self, workdir: Path) -> Path:
        lr = f"_lr{self.lr:g}" if self.lr else ""
        return workdir / "cells" / self.method / f"{experiment.budget_name(self.budget)}{lr}_s{self.seed}"

    def describe(self) -> str:
        lr = f", lr {self.lr:g}" if self.lr else ""
        return f"{self.method}, {experiment.budget_name(self.budget)} labels{lr}, seed {self.seed}"


# ----------------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------------
def part_cells(config) -> dict[str, list[Cell]]:
    """{part: its cells} for the parts in ``config.parts``; a variant's rate is ``config.lr[start]`` unless
    the part sweeps rates (``lrs``); probes (strategy features) get lr 0 (one cell, whatever the sweep)."""
    out = {}
    for part in config.parts:
        p = config[part]
        budgets = tuple(p.budgets) if "budgets" in p else (int(p.budget),)
        cells = []
        for name in p.variants:
            v = VARIANTS[name]
            if v.strategy == "features":
                lrs = (0.0,)
            elif "lrs" in p:
                lrs = tuple(float(x) for x in p.lrs)
            else:
                lrs = (float(config.lr[v.start]),)
            cells += [Cell(name, int(b), lr, int(s)) for b in budgets for lr in lrs for s in config.seeds]
        out[part] = cells
    return out


def grid(config) -> list[Cell]:
    """Every cell once, in run order: cheap parts first (probes before gradient training), so a short
    session finishes whole parts."""
    cells = list(dict.fromkeys(c for cells in part_cells(config).values() for c in cells))
    return sorted(cells, key=lambda c: (VARIANTS[c.method].start in ("minilm", "minilm_tapt"),
                                        VARIANTS[c.method].strategy != "features"))


def validate(config) -> None:
    """ConfigError (one line, naming the fix) for a config the experiment cannot run."""
    unknown = [p for p in config.parts if p not in PARTS]
    if unknown or not config.parts:
        raise config_lib.ConfigError(f"parts {unknown or '()'} unknown; choose from {', '.join(PARTS)}")
    for part in config.parts:
        p = config[part]
        bad = [v for v in p.variants if v not in VARIANTS]
        if bad or not p.variants:
            raise config_lib.ConfigError(f"{part}.variants {bad or '()'} unknown; choose from {', '.join(VARIANTS)}")
        budgets = tuple(p.budgets) if "budgets" in p else (p.budget,)
        if not budgets or any(int(b) < 0 for b in budgets):
            raise config_lib.ConfigError(f"{part}: label budgets {budgets} must be counts >= 1, or 0 for all labels")
        if "lrs" in p and (not p.lrs or any(not float(x) > 0 for x in p.lrs)):
            raise config_lib.ConfigError(f"{part}.lrs={tuple(p.lrs)} must be learning rates > 0, e.g. (1e-5, 1e-3)")
        if any(VARIANTS[v].data for v in p.variants) and not all(int(b) > 0 for b in budgets):
            raise config_lib.ConfigError(f"{part}: budget 0 (all labels) is not supported for variants fine-tuned on "
                                         f"another dataset; give label counts, e.g. (100, 1000)")
        missing = sorted({VARIANTS[v].start for v in p.variants if VARIANTS[v].strategy != "features"
                          and "lrs" not in p and VARIANTS[v].start not in config.lr})
        if missing:
            raise config_lib.ConfigError(f"{part}: no learning rate for start {missing[0]}: set --config.lr.{missing[0]}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise config_lib.ConfigError(f"seeds={tuple(config.seeds)} must be distinct integers")
    if config.max_epochs <= 0:
        raise config_lib.ConfigError(f"max_epochs={config.max_epochs} must be > 0")
    if not 0.5 < config.collapse_share <= 1.0:
        raise config_lib.ConfigError(f"collapse_share={config.collapse_share} must be in (0.5, 1], e.g. 0.95")
    config_lib.validate_finetune(config.finetune, prefix="finetune.")
    if config.finetune.data.get("validation", ""):
        raise config_lib.ConfigError("finetune.data.validation adds labels beyond each budget; here the budget is "
                                     "all labels (validation carved out of it): leave it empty")
    if needed_starts(config) & {"bert_indomain", *TAPT_BASES}:
        experiment.tapt_source(config.finetune.data)  # no readable training texts: fail now, not after an hour


# ----------------------------------------------------------------------------------------------------
# Starting points
# ----------------------------------------------------------------------------------------------------
def needed_starts(config) -> set[str]:
    """The starts the grid uses: each variant's, scratch's architecture-and-tokenizer donors, TAPT's bases."""
    starts = {VARIANTS[c.method].start for c in grid(config)}
    starts |= {VARIANTS[c.method].like for c in grid(config) if VARIANTS[c.method].start == "scratch"}
    return starts | {TAPT_BASES[s] for s in starts if s in TAPT_BASES}


def prepare_starts(config, workdir: Path) -> dict:
    """{start: {"init_from", "wall_seconds", "note"}} for the starts the grid uses, made here if needed."""
    needed = needed_starts(config)
    costs_path = workdir / "pretraining_costs.json"
    costs = json.loads(costs_path.read_text()) if costs_path.exists() else {}
    starts = {}
    if "bert_ood" in needed:
        starts["bert_ood"] = experiment.tljax_start(config.tljax, workdir, costs)
    bert_cfg = config_lib.load_config_file(config.tljax.pretrain_config)
    if config.tljax.pretrain_steps:
        bert_cfg.train.steps = int(config.tljax.pretrain_steps)
    # The same model, tokenizer recipe and steps x batch x length as the out-of-domain BERT; only the text
    # differs: the task's training texts (never a validation or test text), or the Chinese reviews' ones.
    for name, folder, source in (("bert_indomain", "pretrain_indomain", lambda: experiment.tapt_source(config.finetune.data)),
                                 ("bert_zh", "pretrain_zh", lambda: "builtin:chinese_reviews_train_text")):
        if name in needed:
            pcfg = config_lib.load_config_file(config.tljax.pretrain_config)
            pcfg.train = bert_cfg.train
            pcfg.data.update(source=source(), eval_source="",
                             holdout=float(config.indomain.holdout), subsample=float(config.indomain.subsample))
            starts[name] = experiment.pretrain_start(pcfg, workdir / folder, name, costs, config.tljax.pretrain_config)
    if "gpt" in needed:
        pcfg = config_lib.load_config_file(config.gpt.pretrain_config)
        if config.gpt.match_bert:  # same size and compute as the BERT: its width, depth, data and steps
            for k in ("hidden_size", "num_layers", "num_heads", "mlp_dim", "max_len"):
                pcfg.model[k] = bert_cfg.model[k]
            for k in ("source", "eval_source", "holdout", "subsample", "seq_len", "batch_size"):
                pcfg.data[k] = bert_cfg.data[k]
            pcfg.data.tokenizer.vocab_size = bert_cfg.data.tokenizer.vocab_size
            for k in ("steps", "lr", "warmup_steps", "b2", "eval_every", "checkpoint_every"):
                pcfg.train[k] = bert_cfg.train[k]
        starts["gpt"] = experiment.pretrain_start(pcfg, workdir / "pretrain_gpt", "gpt", costs,
                                                  config.gpt.pretrain_config)
    if "word2vec" in needed:
        starts["word2vec"] = experiment.word2vec_start(config.word2vec, workdir, costs)
    if "minilm" in needed:
        starts["minilm"] = {"init_from": config.minilm.init_from, "wall_seconds": None,
                            "note": "pretrained by its authors (not measured here)"}
    for name, base in TAPT_BASES.items():
        if name in needed:
            starts[name] = experiment.make_tapt_start(config, workdir, name, starts[base], costs,
                                                      lr=float(config.tapt.lr.get(base, 0.0)))
    if is_lead_process():
        write_json(costs_path, costs)
    return starts


def cell_config(config, cell: Cell, starts: dict, num_all: int) -> ml_collections.ConfigDict:
    v = VARIANTS[cell.method]
    scratch = v.start == "scratch"
    # Probes train no weights by gradient: their cell keeps finetune.train.lr, which they do not read.
    lr = cell.lr or config.finetune.train.lr
    c = experiment.finetune_cell_config(
        config, v.strategy, cell.budget, cell.seed, lr, num_all,
        init_from="none" if scratch else starts[v.start]["init_from"],
        model_like=starts[v.like]["init_from"] if scratch else None,
        layer_lr_decay=v.layer_lr_decay, pooling=v.pooling)
    if v.data:  # another task: its built-in set; the forgetting measure (English corpus text) is not asked here
        c.data.update(name=v.data, train="", test="")
        c.forgetting.enabled = False
    return c


# ----------------------------------------------------------------------------------------------------
# Measures read from a cell's files
# ----------------------------------------------------------------------------------------------------
def is_negation(text: str) -> bool:
    """Whether a text holds a negation (not, no, never, cannot, n't) that can flip what the words around it mean."""
    return NEGATION.search(text) is not None


def majority_share(predicted: list) -> float:
    """The share of the most frequent predicted label among ``predicted`` (length N): 1.0 means every
    prediction is one class."""
    if not predicted:
        return float("nan")
    _, counts = np.unique(np.asarray(predicted, dtype=object).astype(str), return_counts=True)
    return float(counts.max() / len(predicted))


def read_predictions(cell_dir: Path) -> list[dict]:
    """The rows of a cell's ``predictions.csv`` (text, label, predicted, prob_*); [] if it has none."""
    path = cell_dir / "predictions.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def prediction_measures(rows: list[dict], collapse_share: float) -> dict:
    """Accuracy on the negation subset, its size, the majority share of the predictions, whether that is a
    collapse, and the accuracy of always predicting the test set's most frequent label."""
    neg = [r for r in rows if is_negation(r["text"])]
    share = majority_share([r["predicted"] for r in rows])
    return {"negation_accuracy": float(np.mean([r["label"] == r["predicted"] for r in neg])) if neg else "",
            "negation_count": len(neg), "majority_share": share if rows else "",
            "collapsed": bool(share >= collapse_share) if rows else "",
            "majority_class_accuracy": majority_share([r["label"] for r in rows]) if rows else ""}


def loss_curve(cell_dir: Path) -> list[tuple[int, float]]:
    """[(step, training loss)] from a cell's metric rows (metrics.jsonl)."""
    path = cell_dir / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            loss = row.get("train/loss", row.get("loss"))
            if loss is not None:
                out.append((int(row["step"]), float(loss)))
    return out


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------
def run(config, workdir: str | Path) -> dict:
    """Run (or resume) the failure-modes grid into ``workdir``; write the results and return
    {"rows": [...], "readings": {part: [lines]}}. The config is checked first; the workdir is locked."""
    return experiment.locked_run(config, workdir, validate, _run)


def _run(config, workdir: Path) -> dict:
    t_start = time.time()
    starts = prepare_starts(config, workdir)
    num_all = labeled.load_labeled(dict(config.finetune.data, num_labeled=0), 0).labels_used
    parts = part_cells(config)
    cells = grid(config)
    parts_of = {c: [p for p, cs in parts.items() if c in cs] for c in cells}
    finished = experiment.finished_cells(cells, workdir)
    log(f"failure modes: {len(cells)} cells ({', '.join(f'{p} {len(cs)}' for p, cs in parts.items())}; shared "
        f"cells run once), {len(finished)} already done; 'all' = {num_all} labels")
    rows: list[dict] = []

    def run_cell(cell: Cell, cfg, cell_dir: Path, finished: dict) -> dict:
        t0 = time.time()
        try:
            return finetune.run(cfg, cell_dir, feature_cache=False)
        except engine.Diverged as e:  # a too-high rate is a result here, not a crash
            log(f"{cell.describe()}: diverged ({str(e).splitlines()[0]}); recorded as such")
            summary = {"diverged": True, "test_accuracy": None, "test_macro_f1": None, "forgetting": None,
                       "num_labeled": cell.budget or num_all, "labels_used": cell.budget or num_all,
                       "trainable_params": None, "wall_seconds": time.time() - t0}
            if is_lead_process():
                cell_dir.mkdir(parents=True, exist_ok=True)
                if not (cell_dir / "config.json").exists():  # re-runs compare a finished cell's settings
                    config_lib.save_config(cfg, cell_dir)
                write_json(cell_dir / "summary.json", summary)
            return summary

    def after_cell(cell: Cell, cfg, summary: dict, ran: bool) -> None:
        rows.append(_row(cell, cfg, summary, workdir, parts_of[cell], config.collapse_share))
        if ran:
            write_results(rows, starts, config, workdir)

    experiment.run_cells(cells, workdir, lambda c: cell_config(config, c, starts, num_all), run_cell,
                         after_cell, finished)
    readings = write_results(rows, starts, config, workdir)
    log("\n" + "\n".join(f"{part}: {line}" for part, lines in readings.items() for line in lines))
    log(f"results: {workdir}/results.csv, results.md, *.png "
        f"({experiment.format_seconds(time.time() - t_start)} this invocation)")
    return {"rows": rows, "readings": readings}


def _row(cell: Cell, cfg, summary: dict, workdir: Path, parts: list[str], collapse_share: float) -> dict:
    v = VARIANTS[cell.method]
    forgetting = summary.get("forgetting") or {}
    measures = prediction_measures(read_predictions(cell.dir(workdir)), collapse_share)
    if v.data:  # the negation subset is English words: not a measure of another language's texts
        measures.update(negation_accuracy="", negation_count="")
    blank = lambda x: "" if x is None else x
    return {"method": cell.method, "start": v.start, "strategy": v.strategy, "layer_lr_decay": v.layer_lr_decay,
            "labels": experiment.budget_name(cell.budget), "num_labeled": summary.get("labels_used", summary["num_labeled"]),
            "lr": cell.lr or "", "seed": cell.seed, "parts": ";".join(parts),
            "test_accuracy": blank(summary.get("test_accuracy")), "test_macro_f1": blank(summary.get("test_macro_f1")),
            **measures, "diverged": bool(summary.get("diverged", False)),
            "forgetting": blank(forgetting.get("increase")),
            "pretrain_loss_before": blank(forgetting.get("pretrain_loss_before")),
            "pretrain_loss_after": blank(forgetting.get("pretrain_loss_after")),
            "trainable_params": blank(summary.get("trainable_params")), "wall_seconds": summary["wall_seconds"],
            "best_step": summary.get("best_step") or "", "steps": cfg.train.steps if v.strategy != "features" else 0}


# ----------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------
def _in_part(rows: list[dict], part: str) -> list[dict]:
    return [r for r in rows if part in r["parts"].split(";")]


def _lrs(rows: list[dict]) -> list:
    return sorted({r["lr"] for r in rows if r["lr"] != ""}, key=float)


def write_results(rows: list[dict], starts: dict, config, workdir: Path) -> dict:
    """results.csv, results.md, the plots and readings.json from the rows so far; returns the readings."""
    readings = {p: reading(p, _in_part(rows, p)) for p in config.parts}
    if is_lead_process():
        experiment.write_csv(rows, workdir / "results.csv", CSV_FIELDS)
        (workdir / "results.md").write_text(results_markdown(rows, readings, starts, config))
        plot_all(rows, workdir, config)
        write_json(workdir / "readings.json", readings)
    return readings


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a ``results.csv`` this experiment wrote, with the types ``_row`` gives them (booleans for
    collapsed / diverged, a float or "" for lr, the rest as written), so that the results can be rebuilt."""
    def boolean(v: str):
        return {"True": True, "False": False}.get(v, "")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [k for k in CSV_FIELDS if rows and k not in rows[0]]
    if missing:
        raise config_lib.ConfigError(f"{path} is not a failure-modes results.csv (no column {missing[0]!r})")
    for r in rows:
        r.update(collapsed=boolean(r["collapsed"]), diverged=r["diverged"] == "True",
                 lr=float(r["lr"]) if r["lr"] else "")
    return rows


def report(config, csv_paths: list[str | Path], out_dir: str | Path) -> dict:
    """results.csv / results.md / plots / readings of the rows of several runs' ``results.csv`` files (e.g. a
    grid run in slices: one invocation per session, each with some variants), into ``out_dir``. A cell found
    in two files (same method, labels, lr and seed) is an error: which one to keep is the user's choice."""
    rows = experiment.merge_rows(csv_paths, read_rows, lambda r: (r["method"], r["labels"], r["lr"], r["seed"]))
    parts = [p for p in config.parts if any(part in r["parts"].split(";") for r in rows for part in [p])]
    config = ml_collections.ConfigDict(config.to_dict())
    config.parts = tuple(parts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_results(rows, {}, config, out)


def reading(part: str, rows: list[dict]) -> list[str]:
    """A few plain lines saying what the part's numbers show (means over seeds), whichever way they fall."""
    if not rows:
        return ["no results yet"]
    acc = experiment.aggregate(rows, "test_accuracy", lambda r: (r["method"], r["labels"], r["lr"]))
    title = lambda m: VARIANTS[m].title
    lines = []
    if part == "mismatch":
        for b in experiment.budget_order([r["labels"] for r in rows]):
            got = {m: a[0] for (m, lab, _), a in acc.items() if lab == b}
            pairs = [("bert_indomain", "bert_ood", "in-domain vs out-of-domain pretraining"),
                     ("bert_ood_tapt", "bert_ood", "TAPT after out-of-domain pretraining"),
                     ("minilm_tapt", "minilm", "TAPT on MiniLM"), ("bert_ood", "scratch", "out-of-domain BERT vs scratch")]
            said = [f"{what} {got[a]:.3f} vs {got[b_]:.3f} ({got[a] - got[b_]:+.3f})" for a, b_, what in pairs
                    if a in got and b_ in got]
            if said:
                lines.append(f"{b} labels: " + "; ".join(said) + ".")
    elif part == "forgetting":
        forg = experiment.aggregate(rows, "forgetting", lambda r: (r["method"], r["labels"], r["lr"]))
        for m in dict.fromkeys(r["method"] for r in rows):
            pts = sorted(((float(k[2]) if k[2] != "" else 0.0, forg[k][0], acc[k][0]) for k in forg
                          if k[0] == m and k in acc))
            if pts:
                lines.append(f"{title(m)}: " + ", ".join(f"lr {lr:g}: forgetting {f:+.3f} nats, accuracy {a:.3f}"
                                                           for lr, f, a in pts) + ".")
            elif any(r["method"] == m for r in rows):
                lines.append(f"{title(m)}: frozen encoder, nothing to forget (accuracy "
                             f"{np.mean([float(r['test_accuracy']) for r in rows if r['method'] == m]):.3f}).")
    elif part == "lr_sweep":
        f1 = experiment.aggregate(rows, "test_macro_f1", lambda r: (r["method"], r["labels"], r["lr"]))
        for m in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == m]
            keys = [(m, mine[0]["labels"], lr) for lr in _lrs(mine)]
            bad = [k[2] for k in keys if any(r["lr"] == k[2] and (r["collapsed"] is True or r["diverged"])
                                             for r in mine)]
            # A collapsed cell scores the test set's majority share: never "best", however that compares.
            fine = [k for k in keys if k in acc and k[2] not in bad]
            best = max(fine, key=lambda k: acc[k][0]) if fine else None
            said = (f"best lr {float(best[2]):g} ({acc[best][0]:.3f})" if best else "every rate collapsed")
            said += (f"; collapses to one class (or diverges) from lr {float(bad[0]):g}"
                     + (f", where accuracy {acc[(m, mine[0]['labels'], bad[0])][0]:.3f} is the majority share and "
                        f"macro-F1 {f1[(m, mine[0]['labels'], bad[0])][0]:.3f} shows it"
                        if (m, mine[0]["labels"], bad[0]) in acc else "") if bad else "; no collapse in the swept range")
            lines.append(f"{title(m)}: {said}; accuracy by lr: "
                         + ", ".join(f"{float(k[2]):g}: {acc[k][0]:.3f}" for k in keys if k in acc) + ".")
    elif part == "features":
        neg = experiment.aggregate(rows, "negation_accuracy", lambda r: (r["method"], r["labels"], r["lr"]))
        for b in experiment.budget_order([r["labels"] for r in rows]):
            got = {m: (a[0], neg.get(k, (float("nan"),))[0]) for k, a in acc.items()
                   for m in [k[0]] if k[1] == b}
            if "bert_features" in got and "gpt_features" in got:
                g = max((m for m in ("gpt_features", "gpt_features_mean") if m in got), key=lambda m: got[m][0])
                lines.append(f"{b} labels: frozen MLM features {got['bert_features'][0]:.3f} vs the best frozen CLM "
                             f"features {got[g][0]:.3f} ({g}; {got['bert_features'][0] - got[g][0]:+.3f} for MLM).")
            gaps = ", ".join(f"{title(m)} {a:.3f} all / {n:.3f} negated ({n - a:+.3f})" for m, (a, n) in got.items())
            lines.append(f"{b} labels, accuracy on all test texts vs on those with a negation: {gaps}.")
    elif part == "language":
        floor = next((float(r["majority_class_accuracy"]) for r in rows if r["majority_class_accuracy"] != ""), None)
        for b in experiment.budget_order([r["labels"] for r in rows]):
            got = {m: a[0] for (m, lab, _), a in acc.items() if lab == b}
            pairs = [("bert_zh", "bert_ood_zh", "Chinese vs English pretraining of the tiny BERT"),
                     ("bert_zh", "scratch_zh", "Chinese pretraining vs scratch"),
                     ("minilm_zh", "scratch_zh", "English MiniLM vs scratch"),
                     ("minilm_zh", "bert_zh", "English MiniLM vs the Chinese tiny BERT")]
            said = [f"{what} {got[a]:.3f} vs {got[b_]:.3f} ({got[a] - got[b_]:+.3f})" for a, b_, what in pairs
                    if a in got and b_ in got]
            if said:
                lines.append(f"{b} labels: " + "; ".join(said)
                             + (f" (always the majority class: {floor:.3f})." if floor is not None else "."))
    return lines or ["not enough results for a reading yet"]


def results_markdown(rows: list[dict], readings: dict, starts: dict, config) -> str:
    """A table per part (mean ± std over seeds), the starting points and the readings."""
    seeds = sorted({int(r["seed"]) for r in rows})
    text = experiment.cell_text
    out = [f"# Failure modes: {config.finetune.data.train or config.finetune.data.name or 'rotten_tomatoes'}", "",
           f"Mean ± std over seeds {seeds}. Label budget rule: budget = all labels, validation carved out of it "
           f"({experiment.validation_note(config.finetune.data)}). A cell 'collapses' when at least "
           f"{config.collapse_share:.0%} of its test predictions are one class. 'Negated': the test texts "
           f"containing not, no, never, cannot or n't (whole words, any case).", ""]
    key = lambda r: (r["method"], r["labels"], r["lr"])
    fields = [("test_accuracy", "accuracy", 3), ("test_macro_f1", "macro-F1", 3),
              ("negation_accuracy", "acc. negated", 3), ("majority_share", "majority share", 2),
              ("forgetting", "forgetting (nats)", 3), ("wall_seconds", "wall s", 0)]
    for part in config.parts:
        mine = _in_part(rows, part)
        if not mine:
            continue
        out += [f"## {part}", "", "| variant | labels | lr | " + " | ".join(f[1] for f in fields) + " |",
                "| --- | ---: | ---: |" + " ---: |" * len(fields)]
        st = {f: experiment.aggregate(mine, f, key) for f, _, _ in fields}
        for k in dict.fromkeys(key(r) for r in mine):
            flag = " **collapsed**" if any(key(r) == k and r["collapsed"] is True for r in mine) else ""
            flag += " **diverged**" if any(key(r) == k and r["diverged"] for r in mine) else ""
            out.append(f"| {VARIANTS[k[0]].title}{flag} | {k[1]} | {float(k[2]):g} | " if k[2] != "" else
                       f"| {VARIANTS[k[0]].title}{flag} | {k[1]} | – | ")
            out[-1] += " | ".join(text(st[f].get(k), d, signed=f == "forgetting") for f, _, d in fields) + " |"
        out += ["", "Reading: " + " ".join(readings.get(part, [])), ""]
    out += ["## Starting points", ""] if starts else []
    out += [f"- {k}: {v['init_from']} — {v['note']}" + (f", {experiment.format_seconds(v['wall_seconds'])}"
                                                         if v["wall_seconds"] is not None else "")
            for k, v in starts.items()]
    return "\n".join(out) + "\n"


def plot_all(rows: list[dict], workdir: Path, config) -> None:
    """mismatch.png, forgetting.png, lr_sweep.png, features.png, language.png for the parts with results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = lambda r: (r["method"], r["labels"], r["lr"])

    def save(fig, name):
        tmp = workdir / f"{name}.tmp.png"
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, workdir / f"{name}.png")

    def bars(part: str, title: str, floor_line: bool = False):
        """Accuracy bars (mean ± std over seeds) of the part's variants, one bar per budget."""
        mine = _in_part(rows, part)
        if not mine:
            return
        acc = experiment.aggregate(mine, "test_accuracy", key)
        budgets = experiment.budget_order([r["labels"] for r in mine])
        methods = list(dict.fromkeys(r["method"] for r in mine))
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(budgets)
        for i, b in enumerate(budgets):
            vals = [next((v for k, v in acc.items() if k[:2] == (m, b)), (np.nan, 0.0, 0)) for m in methods]
            ax.bar(np.arange(len(methods)) + i * width, [v[0] for v in vals], width, yerr=[v[1] for v in vals],
                   label=f"{b} labels", capsize=3)
        if floor_line:  # the test set's majority share: what predicting one class scores
            floor = next((float(r["majority_class_accuracy"]) for r in mine if r["majority_class_accuracy"] != ""), None)
            if floor is not None:
                ax.axhline(floor, color="grey", linestyle=":", linewidth=1, label="always the majority class")
        ax.set_xticks(np.arange(len(methods)) + width * (len(budgets) - 1) / 2,
                      [VARIANTS[m].title.replace(": full", "") for m in methods], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0.45, None)
        ax.set_ylabel("test accuracy")
        ax.set_title(title)
        ax.legend(fontsize=8)
        save(fig, part)

    bars("mismatch", "domain mismatch: where the encoder was pretrained")
    bars("language", "language mismatch: English-pretrained models on Chinese reviews", floor_line=True)

    mine = [r for r in _in_part(rows, "forgetting") if r["test_accuracy"] != ""]
    if mine:
        acc, forg = experiment.aggregate(mine, "test_accuracy", key), experiment.aggregate(mine, "forgetting", key)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in dict.fromkeys(r["method"] for r in mine):
            pts = sorted((float(k[2] or 0), forg.get(k, (0.0,))[0], acc[k][0]) for k in acc if k[0] == m)
            ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=VARIANTS[m].title)
            for lr, f, a in pts:
                if lr:
                    ax.annotate(f"{lr:g}", (f, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("forgetting: increase of the MLM loss on held-out general text (nats)")
        ax.set_ylabel("test accuracy")
        ax.set_title("catastrophic forgetting vs task accuracy (points: learning rates)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "forgetting")

    mine = _in_part(rows, "lr_sweep")
    if mine:
        acc = experiment.aggregate(mine, "test_accuracy", key)
        methods = list(dict.fromkeys(r["method"] for r in mine))
        floor = next((float(r["majority_class_accuracy"]) for r in mine if r["majority_class_accuracy"] != ""), 0.5)
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for m in methods:
            pts = sorted((float(k[2]), v[0]) for k, v in acc.items() if k[0] == m)
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=VARIANTS[m].title)
            bad = sorted({float(r["lr"]) for r in mine if r["method"] == m and (r["collapsed"] is True or r["diverged"])})
            ys = dict(pts)  # a diverged cell has no accuracy: marked at the majority class's
            ax.scatter(bad, [ys.get(lr, floor) for lr in bad], marker="x", s=120, color=line.get_color(), zorder=5)
        ax.axhline(floor, color="grey", linestyle=":", linewidth=1)
        ax.annotate("always the majority class", (ax.get_xlim()[0], floor), fontsize=7, xytext=(4, -10),
                    textcoords="offset points", color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("test accuracy")
        ax.set_title("learning-rate sweep (x: collapsed to one class or diverged)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        first = methods[0]
        cmap = plt.get_cmap("viridis")
        lrs = _lrs([r for r in mine if r["method"] == first])
        seed = min(int(r["seed"]) for r in mine if r["method"] == first)  # one seed's curves, every rate
        for i, lr in enumerate(lrs):
            r = next((r for r in mine if r["method"] == first and r["lr"] == lr and int(r["seed"]) == seed), None)
            curve = loss_curve(Cell(first, 0 if r["labels"] == "all" else int(r["labels"]), float(lr),
                                    seed).dir(workdir)) if r else []
            if curve:
                ax2.plot(*zip(*curve), color=cmap(i / max(1, len(lrs) - 1)), label=f"lr {float(lr):g}")
        ax2.set_xlabel("step")
        ax2.set_ylabel("training loss")
        ax2.set_title(f"{VARIANTS[first].title}: training loss (seed {seed})")
        if ax2.get_lines():
            ax2.legend(fontsize=8)
        else:  # rebuilt from results.csv files alone (scripts/experiment_report.py): no cell folders here
            ax2.text(0.5, 0.5, "loss curves need the cells' folders", ha="center", transform=ax2.transAxes)
        ax2.grid(alpha=0.3)
        save(fig, "lr_sweep")

    mine = _in_part(rows, "features")
    if mine:
        acc, neg = experiment.aggregate(mine, "test_accuracy", key), experiment.aggregate(mine, "negation_accuracy", key)
        ks = list(dict.fromkeys(key(r) for r in mine))
        fig, ax = plt.subplots(figsize=(8, 4.5))
        x = np.arange(len(ks))
        ax.bar(x - 0.2, [acc.get(k, (np.nan,))[0] for k in ks], 0.4, label="all test texts")
        ax.bar(x + 0.2, [neg.get(k, (np.nan,))[0] for k in ks], 0.4, label="texts with a negation")
        ax.set_xticks(x, [f"{VARIANTS[k[0]].title} ({k[1]})" for k in ks], rotation=20, ha="right", fontsize=7)
        ax.set_ylim(0.45, None)
        ax.set_ylabel("test accuracy")
        ax.set_title("feature extraction: pretraining objective, and context (negation)")
        ax.legend(fontsize=8)
        save(fig, "features")
