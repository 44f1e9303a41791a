"""Benchmark MiniLM sequence classification: tljax against PyTorch + transformers, train step and inference.

The same weights (the ``hf:minilm`` folder, all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads), the same
batches of real Rotten Tomatoes reviews, three measurements:

- **train**: one fine-tuning step on 32 x 64 (ids, mask, labels). tljax: the jitted, state-donating step
  built exactly as ``tljax finetune`` builds it (``finetune.classifier_start`` + ``finetune.build_gradient``:
  ``engine.setup`` + ``engine.compile_train_step`` with ``tasks.classify.train_loss``, strategy ``full``).
  PyTorch: ``AutoModelForSequenceClassification`` (train mode, dropout 0.1) + ``torch.optim.AdamW(fused)``
  + ``clip_grad_norm_(1.0)``.
- **infer**: logits of 128 x 64 (tljax: the fine-tuning run's evaluation function ``logits_fn``; PyTorch:
  eval mode under ``torch.inference_mode``).
- **predict**: logits of ~2,000 review snippets of mixed length, in batches of 128. tljax: through
  ``tasks.classify.batched_apply`` (what validation, test and prediction use: rows sorted by length, each
  batch cut to its longest row rounded up to 16). PyTorch gets the same sorted batches, each cut to its
  exact longest row (no compilation, so no reason to round).

Both run in one process and **alternate** in rounds (order flipped every round). A round during which other
processes kept more than ``--max-other-cores`` cores busy (``/proc/stat``) is discarded and repeated; the
load average is recorded too. Ratios are tljax ÷ PyTorch throughput, median of the per-round ratios.

    python scripts/bench_finetune.py --json out.json
    python scripts/bench_finetune.py --rounds 3 --predict-texts 500      # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# MKL keeps to its AVX2 path on AMD CPUs unless told otherwise (half the matmul rate here); set before it loads.
os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", "AVX512")

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain import CpuMeter, wait_until_idle  # noqa: E402  (the idle-machine guard, shared)

from tljax import finetune, hf  # noqa: E402
from tljax import sharding as shd  # noqa: E402
from tljax.defaults import finetune_config  # noqa: E402
from tljax.init_from import resolve  # noqa: E402
from tljax.tasks import classify  # noqa: E402
from tljax.utils import cache_dir, enable_compilation_cache  # noqa: E402

TRAIN_BATCH, INFER_BATCH, LENGTH = 32, 128, 64


def forward_flops(cfg, rows: int, length: int) -> float:
    """Matmul FLOPs of the encoder's forward over rows x length (2 per multiply-add): per token and layer
    Q, K, V, output 4 H^2 + MLP 2 H F + attention scores and mixing 2 T H multiply-adds."""
    h, f, layers = cfg.hidden_size, cfg.mlp_dim, cfg.num_layers
    return 2.0 * rows * length * layers * (4 * h * h + 2 * h * f + 2 * length * h)


def review_texts(n: int) -> list[str]:
    """The first n review snippets of the prepared Rotten Tomatoes training split."""
    path = cache_dir() / "rotten_tomatoes" / "train.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `tljax data prepare rotten_tomatoes` first")
    with path.open() as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


class Tljax:
    def __init__(self, pre, train_ids, train_mask, labels):
        cfg = finetune_config()
        cfg.init_from = "hf:minilm"
        cfg.data.batch_size = TRAIN_BATCH
        self.model, start = finetune.classifier_start(cfg, pre, 2, train_ids[:1], train_mask[:1])
        self.built = finetune.build_gradient(cfg, self.model, start, pre.model.num_layers, train_ids, train_mask)
        self.mesh_context = lambda: shd.mesh_context(self.built.run.mesh, self.built.run.rules)  # a fresh one per use
        put = self.built.put
        self.batch = put(train_ids), put(train_mask), put(labels)
        self.state = self.built.run.state
        self.params = jax.device_put(start, self.built.run.state_sharding.params)  # inference weights

    def train(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.built.train_step(self.state, *self.batch)
        self.last_loss = float(metrics["loss"])  # blocks on the last step
        return time.perf_counter() - t0

    def infer(self, ids, mask, reps: int) -> float:
        ids, mask = self.built.put(ids), self.built.put(mask)
        t0 = time.perf_counter()
        for _ in range(reps):
            out = self.built.logits_fn(self.params, ids, mask)
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    def predict(self, ids, mask) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        logits = classify.batched_apply(self.built.logits_fn, self.params, ids, mask, INFER_BATCH, self.built.put)
        return time.perf_counter() - t0, logits


class Torch:
    def __init__(self, folder: Path, threads: int, train_ids, train_mask, labels):
        import torch
        from transformers import AutoModelForSequenceClassification
        torch.set_num_threads(threads)
        self.torch = torch
        torch.manual_seed(0)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        self.eval_model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
        t = finetune_config().train
        decay = [p for n, p in self.model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
        rest = [p for n, p in self.model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}],
                                     lr=t.lr, betas=(t.b1, t.b2), eps=t.eps, fused=True)
        self.batch = (torch.from_numpy(train_ids.astype(np.int64)), torch.from_numpy(train_mask.astype(np.int64)),
                      torch.from_numpy(labels.astype(np.int64)))
        self.params = sum(p.numel() for p in self.model.parameters())

    def train(self, steps: int) -> float:
        torch, (ids, mask, labels) = self.torch, self.batch
        self.model.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
            self.opt.step()
        self.last_loss = float(loss)
        return time.perf_counter() - t0

    def infer(self, ids, mask, reps: int) -> float:
        torch = self.torch
        ids, mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(reps):
                self.eval_model(input_ids=ids, attention_mask=mask)
        return time.perf_counter() - t0

    def predict(self, ids, mask) -> tuple[float, np.ndarray]:
        torch = self.torch
        t0 = time.perf_counter()
        order = np.argsort(-mask.sum(1), kind="stable")
        out = np.empty((len(ids), 2), np.float32)
        with torch.inference_mode():
            for lo in range(0, len(ids), INFER_BATCH):
                rows = order[lo: lo + INFER_BATCH]
                cols = int(mask[rows].sum(1).max())
                logits = self.eval_model(input_ids=torch.from_numpy(ids[rows, :cols].astype(np.int64)),
                                         attention_mask=torch.from_numpy(mask[rows, :cols].astype(np.int64))).logits
                out[rows] = logits.numpy()
        return time.perf_counter() - t0, out


def load_average() -> float:
    return os.getloadavg()[0]


def run(args) -> dict:
    enable_compilation_cache()  # as tljax finetune: a rerun loads the compiled step and evaluation function
    pre = resolve("hf:minilm")
    folder = hf.locate("minilm")
    texts = review_texts(max(args.predict_texts, TRAIN_BATCH, INFER_BATCH))
    ids, mask = classify.encode_texts(pre.tokenizer, texts, LENGTH)
    labels = np.arange(TRAIN_BATCH, dtype=np.int32) % 2
    tr_ids, tr_mask = ids[:TRAIN_BATCH], mask[:TRAIN_BATCH]
    inf_ids, inf_mask = ids[:INFER_BATCH], mask[:INFER_BATCH]
    pr_ids, pr_mask = ids[:args.predict_texts], mask[:args.predict_texts]
    real_tokens = int(pr_mask.sum())
    t0 = time.perf_counter()
    tl = Tljax(pre, tr_ids, tr_mask, labels)
    with tl.mesh_context():
        tl.train(2), tl.infer(inf_ids, inf_mask, 1)
        _, tl_logits = tl.predict(pr_ids, pr_mask)
    warm_s = time.perf_counter() - t0
    pt = Torch(folder, args.threads, tr_ids, tr_mask, labels)
    pt.train(1), pt.infer(inf_ids, inf_mask, 1)
    _, pt_logits = pt.predict(pr_ids[:INFER_BATCH], pr_mask[:INFER_BATCH])
    print(f"tljax: compile + warm-up {warm_s:.1f}s; PyTorch {torch_version()} ({args.threads} threads, "
          f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS')}); {pt.params:,} parameters; "
          f"predict: {len(pr_ids)} texts, {real_tokens} real tokens (mean {real_tokens / len(pr_ids):.1f})", flush=True)
    # Same weights: PyTorch's classifier head (on [CLS] + pooler) differs from tljax's (mean pooling) and
    # both heads are fresh, so compare the encoders' own work instead: logits are not comparable.

    kinds = ("train", "infer", "predict")
    kept, busy, attempt, meter = [], [], 0, CpuMeter()
    while len(kept) < args.rounds and attempt < args.rounds + args.max_retries:
        wait_until_idle(args.max_other_cores, args.wait_idle)
        row = {"load_average": load_average()}
        meter.start()
        for fw in (("tljax", "pytorch") if attempt % 2 == 0 else ("pytorch", "tljax")):
            obj = tl if fw == "tljax" else pt
            if fw == "tljax":
                with tl.mesh_context():
                    row[f"{fw}_train"] = TRAIN_BATCH * args.steps / tl.train(args.steps)
                    row[f"{fw}_infer"] = INFER_BATCH * args.reps / tl.infer(inf_ids, inf_mask, args.reps)
                    row[f"{fw}_predict"] = len(pr_ids) / tl.predict(pr_ids, pr_mask)[0]
            else:
                row[f"{fw}_train"] = TRAIN_BATCH * args.steps / obj.train(args.steps)
                row[f"{fw}_infer"] = INFER_BATCH * args.reps / obj.infer(inf_ids, inf_mask, args.reps)
                row[f"{fw}_predict"] = len(pr_ids) / obj.predict(pr_ids, pr_mask)[0]
        row["other_cores"], row["steal_cores"] = meter.stop()
        for k in kinds:
            row[f"{k}_ratio"] = row[f"tljax_{k}"] / row[f"pytorch_{k}"]
        attempt += 1
        contended = args.max_retries > 0 and row["other_cores"] + row["steal_cores"] > args.max_other_cores
        (busy if contended else kept).append(row)
        print(f"round {attempt}: " + ", ".join(
            f"{k} {row[f'tljax_{k}']:.1f} / {row[f'pytorch_{k}']:.1f} ex/s = {row[f'{k}_ratio']:.2f}x" for k in kinds)
              + f"; other processes {row['other_cores']:.2f} cores, load {row['load_average']:.2f}"
              + (" -> discarded" if contended else ""), flush=True)
    discarded = len(busy)
    if len(kept) < args.rounds:
        busy.sort(key=lambda r: r["other_cores"] + r["steal_cores"])
        fill = args.rounds - len(kept)
        print(f"warning: only {len(kept)} of {args.rounds} rounds ran on an idle machine; the {fill} least "
              f"contended others are used too", flush=True)
        kept, discarded = kept + busy[:fill], len(busy) - fill
    med = statistics.median
    out = {f"{k}_ratio": med(r[f"{k}_ratio"] for r in kept) for k in kinds}
    cfg = pre.model
    flops = {"train": 3 * forward_flops(cfg, TRAIN_BATCH, LENGTH), "infer": forward_flops(cfg, INFER_BATCH, LENGTH)}
    out.update(
        throughput={fw: {k: med(r[f"{fw}_{k}"] for r in kept) for k in kinds} for fw in ("tljax", "pytorch")},
        gflop_per_s={fw: {k: med(r[f"{fw}_{k}"] for r in kept) * flops[k] / (TRAIN_BATCH if k == "train" else INFER_BATCH) / 1e9
                          for k in ("train", "infer")} for fw in ("tljax", "pytorch")},
        other_cores_median=med(r["other_cores"] for r in kept), load_average_median=med(r["load_average"] for r in kept),
        rounds_discarded=discarded, rounds=kept, predict_texts=len(pr_ids), predict_real_tokens=real_tokens,
        losses={"tljax": tl.last_loss, "pytorch": pt.last_loss},
        machine={"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                 "jax": jax.__version__, "torch": torch_version(), "xla_flags": os.environ.get("XLA_FLAGS", "")})
    return out


def torch_version() -> str:
    import torch
    return torch.__version__


def table(out: dict) -> str:
    names = {"train": f"train step {TRAIN_BATCH} x {LENGTH}", "infer": f"inference {INFER_BATCH} x {LENGTH}",
             "predict": f"predict {out['predict_texts']} reviews (batch {INFER_BATCH}, sorted, cut)"}
    lines = ["| measurement | tljax ex/s | PyTorch ex/s | tljax GFLOP/s | PyTorch GFLOP/s | tljax / PyTorch |",
             "|---|---:|---:|---:|---:|---:|"]
    for k, name in names.items():
        g = out["gflop_per_s"]
        gf = (f"{g['tljax'][k]:.0f} | {g['pytorch'][k]:.0f}" if k in g["tljax"] else "– | –")
        lines.append(f"| {name} | {out['throughput']['tljax'][k]:.1f} | {out['throughput']['pytorch'][k]:.1f} | "
                     f"{gf} | **{out[f'{k}_ratio']:.2f}x** |")
    lines.append(f"\n{len(out['rounds'])} rounds kept ({out['rounds_discarded']} discarded); other processes "
                 f"{out['other_cores_median']:.2f} cores, load average {out['load_average_median']:.2f} (medians)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the ratios and every round here")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="train steps per round and framework")
    ap.add_argument("--reps", type=int, default=3, help="inference batches per round and framework")
    ap.add_argument("--predict-texts", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--max-other-cores", type=float, default=0.25,
                    help="discard a round during which other processes kept more cores busy")
    ap.add_argument("--max-retries", type=int, default=5, help="0: keep every round")
    ap.add_argument("--wait-idle", type=float, default=20.0, help="seconds to wait for an idle machine per round")
    args = ap.parse_args(argv)
    out = run(args)
    print(table(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
