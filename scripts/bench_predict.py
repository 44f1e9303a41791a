"""`tljax predict`'s code path against transformers' PyTorch ``pipeline("text-classification")`` on the same
fine-tuned classifier and the same texts.

    python scripts/bench_predict.py --json bench_predict.json
    python scripts/bench_predict.py --workdir runs/bench_predict --rounds 5 --texts 1000

The model: MiniLM (``hf:minilm``, BERT, 6 layers, hidden 384) fine-tuned for ``--steps`` steps on Rotten
Tomatoes with ``pooling=cls`` (the pooling BertForSequenceClassification computes) into ``--workdir`` (reused
when it already holds a model), then exported with ``tljax.hf.export_classifier_hf`` into ``WORKDIR/hf``.
The texts: the first ``--texts`` review snippets of the Rotten Tomatoes test + validation splits.

- **tljax**: ``Classifier.predict_ids`` — what ``tljax predict`` runs between reading and writing files:
  tokenize (truncate at the run's max_len), sort by length, batches of the run's evaluation batch cut to
  their longest row (multiple of 16), one compiled function per length bucket.
- **transformers**: ``pipeline("text-classification", model=WORKDIR/hf, batch_size=--batch_size,
  truncation=True, top_k=None)`` on CPU, ``torch.set_num_threads`` = the CPU count given to JAX; batches in
  input order, each padded to its longest row.
- One process, one warm-up call each (tljax's compiles its buckets then; that time is reported apart), then
  ``--rounds`` timed rounds alternating which goes first. texts/s per round; the ratio is the median of the
  per-round ratios. Both results are checked to agree (labels, max probability difference). The 1-minute
  load average after each round is printed: on a shared machine, PyTorch suffers more from a busy core
  than XLA does (docs/benchmarks.md), so a loaded machine inflates the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# PyTorch's MKL stays on its AVX2 path on AMD CPUs unless told (docs/benchmarks.md: twice the matmul rate on
# this machine's Zen 5); set before torch loads, as scripts/bench_pretrain.py does.
os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", "AVX512")


def fine_tune(workdir: Path, steps: int) -> None:
    from tljax import finetune
    from tljax.defaults import finetune_config
    c = finetune_config()
    c.update(init_from="hf:minilm", strategy="full", pooling="cls")
    c.data.update(name="rotten_tomatoes", num_labeled=steps * 20, validation_fraction=0.2, max_len=64, batch_size=16)
    c.train.update(steps=steps, lr=5e-5, warmup_steps=max(1, steps // 10), eval_every=max(1, steps // 2),
                   log_every=max(1, steps // 2))
    c.forgetting.enabled = False
    c.mesh.shape = (1, 1, 1)
    finetune.run(c, workdir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/bench_predict", help="fine-tuning run (made when missing)")
    p.add_argument("--steps", type=int, default=40, help="fine-tuning steps for a new benchmark model")
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32, help="the pipeline's batch size")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    import transformers
    from tljax import classifier, hf
    from tljax.data import labeled
    from tljax.utils import write_json

    workdir = Path(args.workdir)
    if not (workdir / "model" / "classifier.json").exists():
        print(f"fine-tuning MiniLM for {args.steps} steps into {workdir}", flush=True)
        fine_tune(workdir, args.steps)
    if not (workdir / "hf" / "config.json").exists():
        hf.export_classifier_hf(workdir, workdir / "hf")
    texts = (labeled.read_texts("builtin:rotten_tomatoes/test")
             + labeled.read_texts("builtin:rotten_tomatoes/validation"))[: args.texts]

    clf = classifier.load_classifier(workdir)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    pipe = transformers.pipeline("text-classification", model=str(workdir / "hf"), batch_size=args.batch_size,
                                 truncation=True, top_k=None, device="cpu")

    def run_tljax():
        return clf.predict_ids(texts)[1]

    def run_pipeline():
        out = pipe(texts)
        return np.asarray([[{d["label"]: d["score"] for d in row}[n] for n in clf.label_names] for row in out])

    t0 = time.perf_counter()
    ours = run_tljax()
    cold = time.perf_counter() - t0
    theirs = run_pipeline()  # warm-up
    agree = float((ours.argmax(1) == theirs.argmax(1)).mean())
    diff = float(np.abs(ours - theirs).max())

    rates, loads = {"tljax": [], "transformers": []}, []
    runs = {"tljax": run_tljax, "transformers": run_pipeline}
    for r in range(args.rounds):
        order = ["tljax", "transformers"] if r % 2 == 0 else ["transformers", "tljax"]
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            rates[name].append(len(texts) / (time.perf_counter() - t0))
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}: tljax {rates['tljax'][-1]:.0f} texts/s, transformers "
              f"{rates['transformers'][-1]:.0f} texts/s, load average {loads[-1]:.1f} on {threads} CPUs", flush=True)
    ratios = [a / b for a, b in zip(rates["tljax"], rates["transformers"])]
    result = {"texts": len(texts), "rounds": args.rounds, "pipeline_batch_size": args.batch_size,
              "tljax_batch_size": clf.batch_size, "max_len": clf.max_len, "torch_threads": threads,
              "tljax_texts_per_s": statistics.median(rates["tljax"]),
              "transformers_texts_per_s": statistics.median(rates["transformers"]),
              "ratio_median": statistics.median(ratios), "ratios": ratios,
              "tljax_first_call_s": cold, "load_average": loads,
              "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS"), "label_agreement": agree, "max_prob_diff": diff,
              "jax": __import__("jax").__version__, "torch": torch.__version__,
              "transformers": transformers.__version__}
    print(f"\n{len(texts)} Rotten Tomatoes snippets, MiniLM classifier (max_len {clf.max_len}), "
          f"{args.rounds} alternating rounds\n")
    print("| path | texts/s (median) |\n| --- | ---: |")
    print(f"| tljax predict (`Classifier.predict_ids`, batch {clf.batch_size}, length buckets) | "
          f"{result['tljax_texts_per_s']:.0f} |")
    print(f"| transformers `pipeline(\"text-classification\", batch_size={args.batch_size})` | "
          f"{result['transformers_texts_per_s']:.0f} |")
    print(f"\ntljax / transformers: {result['ratio_median']:.2f}x (median of per-round ratios "
          f"{', '.join(f'{x:.2f}' for x in ratios)}); tljax's first call (compiling its length buckets): "
          f"{cold:.1f} s; labels agree on {agree:.1%}, max probability difference {diff:.1e}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
