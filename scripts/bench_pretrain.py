"""Benchmark the masked-LM train step: tljax against PyTorch + transformers ``BertForMaskedLM``.

Both frameworks train the same architecture (post-LN BERT, tied decoder, dropout 0.1 on hidden states and
attention probabilities), on the same batches of packed synthetic token ids, with the same AdamW
(clip 1.0, warmup + cosine schedule, decoupled weight decay 0.01 off biases and LayerNorm parameters).
They run in one process on this CPU, **alternating** in rounds, so that machine noise hits both alike;
each round also times a square float32 matmul (JAX, and PyTorch for reference) as the achievable FLOP/s.
A round during which other processes kept the CPUs busy is discarded and repeated (``--max-other-cores``).

    python scripts/bench_pretrain.py                      # tiny + BERT-small, ~3 minutes on 2 idle cores
    python scripts/bench_pretrain.py --sizes tiny --rounds 3 --steps 4 --json /tmp/bench.json

What differs by design: tljax projects to the vocabulary only at the P = ceil(0.15 T) prediction slots of
each sequence (``positions=``, as the original BERT); ``BertForMaskedLM`` projects every position. FLOPs are
counted analytically from what each framework computes (see ``train_flops``), so "model GFLOP/s" is the
rate at which each one does its own matmul work, and tokens/s is the end-to-end comparison.
The input pipeline (``PackedBatches.local_batch`` + host-to-device transfer) is timed on its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# PyTorch's CPU wheel does its matmuls in MKL, which on AMD CPUs stays on its AVX2 code path unless told
# otherwise; on this machine's AVX-512 AMD EPYC this doubles PyTorch's matmul rate. Set before MKL loads.
os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", "AVX512")

import jax
import jax.numpy as jnp
import numpy as np

from tljax import distributed, policy
from tljax.data.packing import PackedBatches
from tljax.defaults import pretrain_config
from tljax.objectives import max_predictions
from tljax.state import count_params
from tljax.tasks import lm as lm_task

# Ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK], as in tljax's WordPiece tokenizers.
PAD, UNK, CLS, SEP, MASK = range(5)
SPECIALS = [PAD, UNK, CLS, SEP, MASK]

SIZES = {
    # configs/bert_mlm_tiny.py
    "tiny": dict(hidden=128, layers=4, heads=4, mlp=256, seq=64, batch=64, vocab=8192, lr=2e-3, steps=8),
    # BERT-small (Turc et al. 2019, "L-4 H-512"), BERT's WordPiece vocabulary size
    "small": dict(hidden=512, layers=4, heads=8, mlp=2048, seq=128, batch=16, vocab=30522, lr=5e-4, steps=3),
}


# ----------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------
def train_flops(s: dict, head_positions: int) -> float:
    """Matmul FLOPs of one train step (forward + backward = 3 x forward, 2 FLOPs per multiply-add).

    Per token and layer: Q, K, V, output projections 4 H^2 and the MLP 2 H F multiply-adds; attention
    scores and the weighted sum 2 T H. The MLM head (dense H^2 + tied decoder H V) runs at
    ``head_positions`` positions per sequence: P for tljax, T for BertForMaskedLM. Embedding look-ups,
    LayerNorm, softmax, GELU and the optimizer are not matmuls and are not counted.
    """
    h, f, t, layers, v, b = s["hidden"], s["mlp"], s["seq"], s["layers"], s["vocab"], s["batch"]
    per_token = layers * (4 * h * h + 2 * h * f + 2 * t * h)
    head = h * h + h * v
    return 6.0 * b * (t * per_token + head_positions * head)


# ----------------------------------------------------------------------------------------------------
# Data: packed rows [N, T] like tljax.data.packing.pack makes them ([CLS] ... [SEP], documents split by [SEP])
# ----------------------------------------------------------------------------------------------------
def synthetic_sequences(s: dict, rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Zipf-like token frequencies, like text, over the non-special ids.
    ranks = np.arange(1, s["vocab"] - len(SPECIALS) + 1)
    p = 1.0 / ranks
    p /= p.sum()
    seqs = (rng.choice(len(ranks), size=(rows, s["seq"]), p=p) + len(SPECIALS)).astype(np.int32)
    seqs[rng.random(seqs.shape) < 1 / 200] = SEP  # document boundaries inside rows
    seqs[:, 0], seqs[:, -1] = CLS, SEP
    return seqs


# ----------------------------------------------------------------------------------------------------
# tljax: the step tljax.pretrain.run trains (tljax.tasks.lm.build)
# ----------------------------------------------------------------------------------------------------
class TljaxBench:
    def __init__(self, s: dict, seqs: np.ndarray, seed: int = 0, overrides: dict | None = None):
        config = pretrain_config(objective="mlm", kind="bert")
        config.model.update(hidden_size=s["hidden"], num_layers=s["layers"], num_heads=s["heads"],
                            mlp_dim=s["mlp"], max_len=s["seq"], vocab_size=s["vocab"])
        config.data.update(seq_len=s["seq"], batch_size=s["batch"])
        config.train.update(steps=100_000, lr=s["lr"], warmup_steps=100)
        config.seed = seed
        for key, value in (overrides or {}).items():  # e.g. {"model.dropout": 0.0}, for experiments
            section, field = key.split(".")
            config[section][field] = value
        self.config = config
        # The pretraining run's own builder: the step benchmarked is the step trained.
        built = lm_task.build(config, SPECIALS, s["vocab"], MASK)
        self.mesh, self.state, self.train_step = built.mesh, built.state, built.step
        self.params = count_params(self.state.params)
        self.batch_sharding = built.batch.sharding
        self.data = PackedBatches(seqs, s["batch"], seed)
        self.step = 0

    def device_batch(self, step: int):
        shape = (self.data.global_batch, self.data.sequences.shape[1])
        return distributed.global_array(self.batch_sharding, shape, lambda rows: self.data.local_batch(step, rows))

    def run(self, n: int) -> float:
        """n train steps, as the trainer's loop does them (batch, dispatch); returns seconds until done."""
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh):
            for _ in range(n):
                self.state, metrics = self.train_step(self.state, self.device_batch(self.step))
                self.step += 1
            jax.block_until_ready((self.state, metrics))
        self.last_loss = float(metrics["loss"])
        return time.perf_counter() - t0

    def input_pipeline(self, n: int) -> float:
        """Seconds per step of batch assembly + transfer alone (blocked, so nothing overlaps it)."""
        t0 = time.perf_counter()
        for i in range(n):
            jax.block_until_ready(self.device_batch(10_000 + i))
        return (time.perf_counter() - t0) / n


# ----------------------------------------------------------------------------------------------------
# PyTorch: transformers BertForMaskedLM + torch.optim.AdamW, masking as DataCollatorForLanguageModeling
# ----------------------------------------------------------------------------------------------------
class TorchBench:
    def __init__(self, s: dict, seqs: np.ndarray, train_cfg, attn: str, seed: int = 0):
        import torch
        from transformers import BertConfig, BertForMaskedLM

        self.torch = torch
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], intermediate_size=s["mlp"],
                         max_position_embeddings=s["seq"], type_vocab_size=2, hidden_act="gelu",
                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12,
                         initializer_range=0.02, pad_token_id=PAD, tie_word_embeddings=True)
        cfg._attn_implementation = attn
        self.model = BertForMaskedLM(cfg).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name
        groups = [
            {"params": [p for n, p in self.model.named_parameters() if not no_decay(n)],
             "weight_decay": train_cfg.weight_decay},
            {"params": [p for n, p in self.model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
        ]
        kw = {"fused": True}
        try:
            self.opt = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(train_cfg.b1, train_cfg.b2),
                                         eps=train_cfg.eps, **kw)
        except (RuntimeError, TypeError):
            kw = {"foreach": True}
            self.opt = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(train_cfg.b1, train_cfg.b2),
                                         eps=train_cfg.eps, **kw)
        self.opt_kind = next(iter(kw))
        # The same schedule as tljax, tabulated once (no JAX call inside the timed loop).
        lrs = np.asarray(jax.jit(jax.vmap(policy.lr_schedule(train_cfg)))(jnp.arange(4096)))
        self.lr_factor = np.maximum(lrs / train_cfg.lr, 0.0).tolist()
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda i: self.lr_factor[min(i, 4095)])
        self.grad_clip = train_cfg.grad_clip
        self.data = PackedBatches(seqs, s["batch"], seed)
        self.vocab = s["vocab"]
        self.special = torch.tensor(SPECIALS)
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0

    def mask(self, ids):
        """15 % of non-special tokens become targets; of those 80 % [MASK], 10 % random, 10 % kept."""
        torch, g = self.torch, self.gen
        eligible = ~torch.isin(ids, self.special)
        selected = (torch.rand(ids.shape, generator=g) < 0.15) & eligible
        action = torch.rand(ids.shape, generator=g)
        random_ids = torch.randint(0, self.vocab, ids.shape, generator=g)
        inputs = torch.where(selected & (action < 0.8), MASK, ids)
        inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
        labels = torch.where(selected, ids, -100)
        return inputs, labels

    def run(self, n: int) -> float:
        torch = self.torch
        t0 = time.perf_counter()
        for _ in range(n):
            ids = torch.from_numpy(self.data.local_batch(self.step)).long()
            inputs, labels = self.mask(ids)
            # attention_mask None = every position is a real token (packed rows), the fastest path.
            loss = self.model(input_ids=inputs, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
        self.last_loss = float(loss.detach())
        return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# Matmul reference
# ----------------------------------------------------------------------------------------------------
class Matmul:
    """Square float32 matmul C = A B (2 n^3 FLOPs), timed in JAX and in PyTorch; returns FLOP/s."""

    def __init__(self, n: int):
        import torch
        self.n, self.torch = n, torch
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
        self.ja, self.jb = jnp.asarray(a), jnp.asarray(b)
        self.jmm = jax.jit(jnp.matmul)
        self.ta, self.tb = torch.from_numpy(a), torch.from_numpy(b)
        self.jax(1), self.pytorch(1)  # compile / warm

    def jax(self, reps: int = 3) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(self.jmm(self.ja, self.jb))
            times.append(time.perf_counter() - t0)
        return 2 * self.n ** 3 / min(times)

    def pytorch(self, reps: int = 3) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            self.torch.mm(self.ta, self.tb)
            times.append(time.perf_counter() - t0)
        return 2 * self.n ** 3 / min(times)


# ----------------------------------------------------------------------------------------------------
# Diagnostics: other processes' CPU use, and the step's own matmuls timed alone
# ----------------------------------------------------------------------------------------------------
class CpuMeter:
    """CPU cores busy with *other* processes (and hypervisor steal) between ``start()`` and ``stop()``.

    This machine is shared; another process on a 2-core box slows both frameworks, PyTorch's OpenMP
    threads (static work split, spin-waits) far more than XLA's work-stealing pool. Rounds run while
    others were busy are flagged, and the best round is reported beside the median.
    """

    @staticmethod
    def _now():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / tick  # user nice system irq softirq
        t = os.times()
        return busy, v[7] / tick, t.user + t.system, time.perf_counter()

    def start(self):
        self._t0 = self._now()

    def stop(self) -> tuple[float, float]:
        """(cores used by other processes, cores lost to hypervisor steal), averaged over the interval."""
        t1 = self._now()
        wall = t1[3] - self._t0[3]
        return (max(0.0, (t1[0] - self._t0[0]) - (t1[2] - self._t0[2])) / wall, (t1[1] - self._t0[1]) / wall)


def wait_until_idle(max_other_cores: float, max_wait_s: float) -> float:
    """Sleep until other processes keep fewer than ``max_other_cores`` cores busy over one second, or
    ``max_wait_s`` has passed. Returns the seconds waited."""
    t0, meter = time.perf_counter(), CpuMeter()
    while time.perf_counter() - t0 < max_wait_s:
        meter.start()
        time.sleep(1.0)
        if sum(meter.stop()) <= max_other_cores:
            break
    return time.perf_counter() - t0


def step_matmul_shapes(s: dict, head_positions: int) -> list[tuple[int, int, int, int, int]]:
    """The train step's matmuls as (count, batch, m, k, n): every dense layer forward, its input gradient
    and its weight gradient; attention scores and mixing (forward and both backward products)."""
    b, t, h, f, layers, v, heads = s["batch"], s["seq"], s["hidden"], s["mlp"], s["layers"], s["vocab"], s["heads"]
    d, m, mh, out = h // heads, b * t, b * head_positions, []

    def dense(rows, k, n, count=1):
        out.extend([(count, 1, rows, k, n), (count, 1, rows, n, k), (count, 1, k, rows, n)])

    dense(m, h, h, 4 * layers)  # query, key, value, attention output
    dense(m, h, f, layers)
    dense(m, f, h, layers)
    bn = b * heads
    out.extend([(layers, bn, t, d, t), (layers, bn, t, t, d),  # scores q k^T, mixing p v
                (layers, bn, t, t, d), (layers, bn, d, t, t),  # their gradients
                (layers, bn, t, d, t), (layers, bn, t, t, d)])
    dense(mh, h, h)  # MLM head transform
    dense(mh, h, v)  # tied decoder
    return out


def matmul_only_seconds(s: dict, head_positions: int, reps: int = 3) -> float:
    """Seconds that the step's matmuls take in JAX when run one by one on their own (best of ``reps``)."""
    total = 0.0
    for count, b, m, k, n in step_matmul_shapes(s, head_positions):
        x, y = jnp.ones((b, m, k), jnp.float32), jnp.ones((b, k, n), jnp.float32)
        f = jax.jit(lambda x, y: jnp.einsum("bmk,bkn->bmn", x, y))
        jax.block_until_ready(f(x, y))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, y))
            times.append(time.perf_counter() - t0)
        total += count * min(times)
    return total


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------
def bench_size(name: str, s: dict, rounds: int, steps: int, mm: Matmul, torch_attn: str,
               max_other_cores: float, max_retries: int, wait_idle_s: float) -> dict:
    tokens = s["batch"] * s["seq"]
    seqs = synthetic_sequences(s, rows=max(64 * s["batch"], 1024))
    t0 = time.perf_counter()
    tl = TljaxBench(s, seqs)
    tl.run(2)  # compile + first steps
    compile_s = time.perf_counter() - t0
    pt = TorchBench(s, seqs, tl.config.train, torch_attn)
    pt.run(1)  # warm allocator and kernels
    p_slots = max_predictions(s["seq"], tl.config.mlm.rate)
    flops = {"tljax": train_flops(s, p_slots), "pytorch": train_flops(s, s["seq"])}
    print(f"[{name}] tljax {tl.params:,} params (compile + 2 steps {compile_s:.1f}s), PyTorch {pt.params:,} "
          f"params (AdamW {pt.opt_kind}, attention {torch_attn}); {tokens} tokens/step; "
          f"train GFLOP/step tljax {flops['tljax'] / 1e9:.1f} (head at {p_slots}/{s['seq']} positions), "
          f"PyTorch {flops['pytorch'] / 1e9:.1f}", flush=True)

    keys = ("tljax", "pytorch", "matmul_jax", "matmul_torch", "ratio", "pct_tljax", "pct_pytorch",
            "other_cores", "steal_cores")
    kept, busy_rows, attempt = [], [], 0
    meter = CpuMeter()
    waited = 0.0
    while len(kept) < rounds and attempt < rounds + max_retries:
        waited += wait_until_idle(max_other_cores, wait_idle_s)
        meter.start()
        row = {"matmul_jax": mm.jax(), "matmul_torch": mm.pytorch()}
        for fw in (("tljax", "pytorch") if attempt % 2 == 0 else ("pytorch", "tljax")):
            row[fw] = (tl if fw == "tljax" else pt).run(steps) / steps
            row[f"pct_{fw}"] = 100 * flops[fw] / row[fw] / row["matmul_jax"]
        row["ratio"] = row["pytorch"] / row["tljax"]
        row["other_cores"], row["steal_cores"] = meter.stop()
        attempt += 1
        busy = max_retries > 0 and row["other_cores"] + row["steal_cores"] > max_other_cores
        (busy_rows if busy else kept).append(row)
        print(f"[{name}] round {attempt}: tljax {row['tljax'] * 1e3:.0f} ms/step, PyTorch "
              f"{row['pytorch'] * 1e3:.0f} ms/step, ratio {row['ratio']:.2f}, matmul JAX "
              f"{row['matmul_jax'] / 1e9:.0f} GFLOP/s; other processes {row['other_cores']:.2f} cores, steal "
              f"{row['steal_cores']:.2f}" + (" -> discarded" if busy else ""), flush=True)
    discarded = len(busy_rows)
    if len(kept) < rounds:
        print(f"[{name}] warning: only {len(kept)} of {rounds} rounds ran while other processes were idle; "
              f"the {rounds - len(kept)} least busy others are used too", flush=True)
        busy_rows.sort(key=lambda r: r["other_cores"] + r["steal_cores"])
        n_fill = rounds - len(kept)
        kept += busy_rows[:n_fill]
        discarded = len(busy_rows) - n_fill
    per_round = {k: [row[k] for row in kept] for k in keys}

    input_s = tl.input_pipeline(20)
    waited += wait_until_idle(max_other_cores, wait_idle_s)
    mm_only = matmul_only_seconds(s, p_slots)
    med = statistics.median
    out = {"config": s, "tokens_per_step": tokens, "prediction_slots": p_slots,
           "matmul_jax_flops": med(per_round["matmul_jax"]), "matmul_torch_flops": med(per_round["matmul_torch"]),
           "matmul_jax_flops_best": max(per_round["matmul_jax"]),
           "ratio_tljax_over_pytorch": med(per_round["ratio"]),
           "ratio_best_rounds": min(per_round["pytorch"]) / min(per_round["tljax"]),
           "other_cores_median": med(per_round["other_cores"]), "rounds_discarded": discarded,
           "seconds_waited_for_idle": waited,
           "input_pipeline_ms": input_s * 1e3,
           "tljax_matmuls_alone_ms": mm_only * 1e3,
           "losses": {"tljax": tl.last_loss, "pytorch": pt.last_loss}, "rounds": per_round}
    for fw in ("tljax", "pytorch"):
        step_s = med(per_round[fw])
        out[fw] = {"step_ms": step_s * 1e3, "best_step_ms": min(per_round[fw]) * 1e3,
                   "tokens_per_s": tokens / step_s, "tokens_per_s_best": tokens / min(per_round[fw]),
                   "flops_per_step": flops[fw], "model_flops_per_s": flops[fw] / step_s,
                   "pct_of_matmul": med(per_round[f"pct_{fw}"]),
                   "params": tl.params if fw == "tljax" else pt.params}
    out["input_pipeline_pct_of_step"] = 100 * input_s / (out["tljax"]["step_ms"] / 1e3)
    out["tljax_matmuls_alone_pct_of_step"] = 100 * mm_only / (out["tljax"]["best_step_ms"] / 1e3)
    return out


def table(results: dict) -> str:
    lines = ["| size | framework | tokens/s | best round tokens/s | step ms | GFLOP/step (MLM head at) | "
             "model GFLOP/s | % of JAX matmul | tljax / PyTorch (median; best rounds) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        for fw, label in (("tljax", "tljax"), ("pytorch", "PyTorch")):
            x = r[fw]
            at = f"{r['prediction_slots']}/{r['config']['seq']} positions" if fw == "tljax" else "all positions"
            ratio = (f"**{r['ratio_tljax_over_pytorch']:.2f}x**; {r['ratio_best_rounds']:.2f}x"
                     if fw == "tljax" else "")
            lines.append(f"| {name} | {label} | {x['tokens_per_s']:,.0f} | {x['tokens_per_s_best']:,.0f} | "
                         f"{x['step_ms']:,.0f} | {x['flops_per_step'] / 1e9:.1f} ({at}) | "
                         f"{x['model_flops_per_s'] / 1e9:.1f} | {x['pct_of_matmul']:.0f} % | {ratio} |")
    notes = ["", "Square f32 matmul, GFLOP/s (median of rounds): " + "; ".join(
        f"{n}: JAX {r['matmul_jax_flops'] / 1e9:.0f} (best {r['matmul_jax_flops_best'] / 1e9:.0f}), "
        f"PyTorch {r['matmul_torch_flops'] / 1e9:.0f}" for n, r in results.items()),
        "tljax step's matmuls run alone in JAX: " + "; ".join(
        f"{n}: {r['tljax_matmuls_alone_ms']:.0f} ms = {r['tljax_matmuls_alone_pct_of_step']:.0f} % of the best "
        f"tljax step" for n, r in results.items()),
        "Input pipeline (local_batch + device transfer): " + "; ".join(
        f"{n}: {r['input_pipeline_ms']:.2f} ms/step = {r['input_pipeline_pct_of_step']:.3f} % of the tljax step"
        for n, r in results.items()),
        "Other processes' CPU use during the kept rounds (cores, median): " + "; ".join(
        f"{n}: {r['other_cores_median']:.2f} ({r['rounds_discarded']} busy rounds discarded)"
        for n, r in results.items())]
    return "\n".join(lines + notes) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,small", help=f"comma-separated, of {sorted(SIZES)}")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians are reported)")
    ap.add_argument("--steps", type=int, default=0,
                    help="train steps per framework per round (0: per-size default, "
                         + ", ".join(f"{k} {v['steps']}" for k, v in SIZES.items()) + ")")
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the reference square matmul")
    ap.add_argument("--torch-attn", default="sdpa", choices=["sdpa", "eager"],
                    help="BertForMaskedLM attention implementation")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="PyTorch intra-op threads (XLA uses every core)")
    ap.add_argument("--max-other-cores", type=float, default=0.25,
                    help="a round during which other processes kept more CPU cores than this busy is "
                         "discarded and repeated (the machine is shared)")
    ap.add_argument("--max-retries", type=int, default=3, help="extra rounds allowed per size (0: keep all)")
    ap.add_argument("--wait-idle", type=float, default=20.0,
                    help="before each round, wait up to this many seconds for other processes to go idle")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args(argv)

    import torch
    import transformers
    torch.set_num_threads(args.threads)
    sizes = [x.strip() for x in args.sizes.split(",") if x.strip()]
    unknown = [x for x in sizes if x not in SIZES]
    if unknown:
        ap.error(f"unknown size(s) {unknown}; choose from {sorted(SIZES)}")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    import tljax
    env = {"cpu": cpu, "cores": os.cpu_count(), "tljax": os.path.dirname(tljax.__file__), "jax": jax.__version__,
           "torch": torch.__version__, "transformers": transformers.__version__, "jax_backend": jax.default_backend(),
           "torch_threads": torch.get_num_threads(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
           "MKL_ENABLE_INSTRUCTIONS": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "")}
    print(f"machine: {env}", flush=True)

    t_start = time.perf_counter()
    mm = Matmul(args.matmul_n)
    results = {}
    for name in sizes:
        s = SIZES[name]
        results[name] = bench_size(name, s, args.rounds, args.steps or s["steps"], mm, args.torch_attn,
                                   args.max_other_cores, args.max_retries, args.wait_idle)
    print()
    print(table(results))
    print(f"total {time.perf_counter() - t_start:.0f}s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
