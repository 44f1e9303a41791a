"""Few-shot benchmark: SetFit (PyTorch, the `setfit` package) and tljax's few-shot methods on the same
labeled subsets, seeds and test set, from the same all-MiniLM-L6-v2 weights (tljax's prompt_probe methods:
SmolLM2-135M-Instruct's prompt label scores, ``hf:smollm2``).

    pip install -e '.[fewshot]'        # setfit + sentence-transformers + torch: for this benchmark only
    python scripts/bench_fewshot.py --budget 100 --seeds 0 1 2 3 4 --json runs/bench_fewshot.json

    python scripts/make_wordnet_topics.py   # once: the second labeled set (WordNet definitions -> 6 topics)
    python scripts/bench_fewshot.py --task wordnet_topics --budget 300 --seeds 0 1 2 3 4 --json runs/bench_wn.json

For each seed the label budget is tljax's class-balanced sample of BUDGET Rotten Tomatoes training
examples (``tljax.data.labeled.load_labeled``); every method sees only those BUDGET labels (tljax's
validation is carved out of them, SetFit needs none and trains on all of them). Test: the 1,188 snippets of
the held-out movies (``--task wordnet_topics``: its training definitions and its 1,192 test definitions).
Prints test accuracy (mean ± std over seeds) and wall seconds per method.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> (title, config overrides on configs/finetune_fewshot.py)
TLJAX_METHODS = {
    "features": ("tljax: MiniLM frozen features + logreg (C by 5-fold CV)",
                 dict(recipe="", strategy="features")),
    "full": ("tljax: MiniLM full fine-tuning (early stopping on the 20 % carve-out)",
             dict(recipe="", strategy="full", train=dict(lr=5e-5, steps=300, eval_every=25, patience=0))),
    "lpft": ("tljax: LP-FT (probe head, then full at lr 1e-5)",
             dict(recipe="lpft", strategy="full", train=dict(lr=1e-5, steps=300, eval_every=25))),
    "setfit": ("tljax: recipe=setfit (configs/finetune_fewshot.py)", dict()),
    "setfit_st": ("tljax: recipe=setfit + 2 rounds of self-training", dict(self_training=dict(rounds=2))),
    # SmolLM2-135M-Instruct's zero-shot prompt scores (0.763 on Rotten Tomatoes with no labels) + logreg;
    # the prompt and verbalizer are the task's (TASKS below).
    "prompt_probe": ("tljax: SmolLM2 prompt label scores + logreg (recipe=prompt_probe)",
                     dict(init_from="hf:smollm2", recipe="prompt_probe", strategy="features", pooling="auto")),
    "prompt_probe_hidden": ("tljax: SmolLM2 prompt label scores + last-token features + logreg",
                            dict(init_from="hf:smollm2", recipe="prompt_probe", strategy="features", pooling="auto",
                                 prompt_probe=dict(hidden=True))),
}


# The labeled sets: Rotten Tomatoes (built in) and WordNet definitions -> topic (scripts/make_wordnet_topics.py
# writes its CSVs into the tljax cache). prompt / verbalizer: what the prompt_probe methods ask SmolLM2.
TASKS = {
    "rotten_tomatoes": dict(data=dict(name="", train="", test=""), test_name="Rotten Tomatoes test (1,188)",
                            prompt="Review: {text}\nSentiment:",
                            verbalizer='{"fresh": " positive", "rotten": " negative"}'),
    "wordnet_topics": dict(data=dict(name=""), test_name="WordNet topics test (1,192)",
                           prompt="Definition: {text}\nThis is the definition of a kind of",
                           verbalizer='{"animal": " animal", "body": " body", "food": " food", '
                                      '"location": " place", "person": " person", "plant": " plant"}'),
}


def task_data(task: str) -> dict:
    """The finetune ``data`` fields selecting ``task``'s train and test sets."""
    data = dict(TASKS[task]["data"])
    if task == "wordnet_topics":
        from tljax.utils import cache_dir
        folder = cache_dir() / "wordnet_topics"
        if not (folder / "train.csv").exists():
            sys.exit(f"bench_fewshot: error: {folder}/train.csv is missing; run python scripts/make_wordnet_topics.py")
        data.update(train=f"csv:{folder}/train.csv", test=f"csv:{folder}/test.csv")
    return data


def _fewshot_config():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "finetune_fewshot", Path(__file__).resolve().parents[1] / "configs" / "finetune_fewshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def run_tljax(method: str, task: str, budget: int, seed: int, workdir: Path, iterations: int,
              max_length: int) -> dict:
    """One tljax finetune run; returns {"accuracy", "seconds", "labels_used"}. iterations: pair iterations of
    the setfit recipes (the same as SetFit's); max_length: tokens per text."""
    from tljax import finetune
    c = _fewshot_config()
    c.init_from = "hf:minilm"  # unless the method starts elsewhere (prompt_probe: a causal LM)
    for key, value in TLJAX_METHODS[method][1].items():
        if isinstance(value, dict):
            c[key].update(value)
        else:
            c[key] = value
    if c.recipe == "prompt_probe":
        c.prompt.update(prompt=TASKS[task]["prompt"], verbalizer=TASKS[task]["verbalizer"])
    c.seed = seed
    c.data.update(num_labeled=budget, max_len=max_length, **task_data(task))
    c.setfit.pair_iterations = iterations
    c.train.checkpoint_every = 0
    c.save_model = False  # timed like SetFit's in-memory model (a prompt probe would write the whole LM)
    t0 = time.time()
    summary = finetune.run(c, workdir / f"{method}_s{seed}", feature_cache=False)
    return {"accuracy": summary["test_accuracy"], "seconds": time.time() - t0, "labels_used": summary["labels_used"]}


def run_setfit(task: str, budget: int, seed: int, iterations: int, max_length: int, output_dir: Path) -> dict:
    """SetFit on the same BUDGET examples (train + tljax's validation carve-out: all of them train)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.linear_model import LogisticRegression
    from tljax.data import labeled
    from tljax.hf import fetch_minilm
    data = labeled.load_labeled({"num_labeled": budget, **task_data(task)}, seed)
    texts = data.train.texts + data.validation.texts
    labels = np.concatenate([data.train.labels, data.validation.labels]).tolist()
    t0 = time.time()
    body = SentenceTransformer(str(fetch_minilm()), device="cpu")
    model = SetFitModel(model_body=body, model_head=LogisticRegression())
    args = TrainingArguments(output_dir=str(output_dir), num_iterations=iterations, max_length=max_length,
                             seed=seed, report_to="none")
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    trainer.train()
    preds = np.asarray(model.predict(data.test.texts, batch_size=64))  # label ids, as trained on
    seconds = time.time() - t0
    return {"accuracy": float((preds == data.test.labels).mean()), "seconds": seconds, "labels_used": len(texts)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="rotten_tomatoes", choices=sorted(TASKS))
    ap.add_argument("--budget", type=int, default=100, help="labels per run, validation included")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--methods", nargs="+", default=["setfit_peer", *TLJAX_METHODS],
                    help=f"setfit_peer and any of {', '.join(TLJAX_METHODS)}")
    ap.add_argument("--iterations", type=int, default=20,
                    help="pair iterations (pairs per example / 2) of SetFit and of tljax's setfit recipes")
    ap.add_argument("--max_length", type=int, default=64)
    ap.add_argument("--json", default="", help="write every run's result here (re-runs skip the runs it holds)")
    ap.add_argument("--workdir", default="", help="where tljax runs write (default: a temporary folder)")
    args = ap.parse_args()
    for m in args.methods:
        if m != "setfit_peer" and m not in TLJAX_METHODS:
            sys.exit(f"bench_fewshot: error: unknown method {m!r}; use setfit_peer or {', '.join(TLJAX_METHODS)}")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    results = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_fewshot_"))
    task_key = "" if args.task == "rotten_tomatoes" else f"/{args.task}"  # Rotten Tomatoes keys as before
    for seed in args.seeds:
        for m in args.methods:
            key = f"{m}/{args.budget}/{seed}/it{args.iterations}" + task_key
            if key in results:
                continue
            if m == "setfit_peer":
                import torch
                torch.manual_seed(seed)
                results[key] = run_setfit(args.task, args.budget, seed, args.iterations, args.max_length,
                                          workdir / f"setfit_peer_s{seed}")
            else:
                results[key] = run_tljax(m, args.task, args.budget, seed, workdir, args.iterations,
                                         args.max_length)
            r = results[key]
            print(f"{m} seed {seed}: accuracy {r['accuracy']:.4f}, {r['seconds']:.0f} s, {r['labels_used']} labels",
                  flush=True)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(results, indent=1))
    titles = {"setfit_peer": f"SetFit 1.x (PyTorch), {args.iterations} pair iterations, logreg head",
              **{k: v[0] for k, v in TLJAX_METHODS.items()}}
    print(f"\n{args.budget} labels (validation and model selection inside the budget; no extra labels), "
          f"seeds {args.seeds}, {TASKS[args.task]['test_name']}\n")
    print(f"| method ({len(args.seeds)} seed(s)) | test accuracy | wall s per run |\n| --- | ---: | ---: |")
    for m in args.methods:
        keys = [f"{m}/{args.budget}/{s}/it{args.iterations}" + task_key for s in args.seeds]
        rs = [results[k] for k in keys if k in results]
        if not rs:
            continue
        acc = np.array([r["accuracy"] for r in rs])
        std = f" ± {acc.std(ddof=1):.3f}" if len(acc) > 1 else ""
        print(f"| {titles[m]} | {acc.mean():.3f}{std} | {np.mean([r['seconds'] for r in rs]):.0f} |")


if __name__ == "__main__":
    main()
