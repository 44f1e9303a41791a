"""Benchmark SmolLM2-135M (``hf:smollm2``) on this CPU: tljax against transformers' PyTorch ``LlamaForCausalLM``.

1. Forward: logits of a batch of 8 × 256 random token ids (no padding), tokens per second.
2. LoRA fine-tuning step: sequence classification (last-token pooling + a 2-class linear head), rank-8
   adapters on every attention query/value kernel, the base frozen, AdamW on adapters + head, clip 1.0.
   tljax runs the step ``tljax finetune --config.strategy=lora`` compiles (``engine.compile_train_step`` of
   ``classify.train_loss`` with ``lora.merge``: the adapters are merged into the kernels inside the step);
   PyTorch runs the usual unmerged form written by hand, ``y = x Wᵀ + s·(x A) B`` on each q/v projection, with
   the backbone's parameters ``requires_grad=False`` and ``torch.optim.AdamW`` over A, B and the head.
3. Memory: the compiled per-device memory of the tljax LoRA step vs a full fine-tuning step of the same model
   and batch (``tljax.memory.train_step_memory``: XLA's buffer assignment; the full step is compiled, not run).

Both run in one process, **alternating** round by round (forward tljax, forward torch, LoRA tljax, LoRA torch;
``--steps`` calls each, their mean timed), so machine noise hits both alike; the reported ratio is the median
of the per-round ratios. PyTorch uses 2 threads and MKL's AVX-512 path (as ``scripts/bench_pretrain.py``).
The PyTorch model is built from tljax's own export of the weights (``tljax.hf.export_hf``), so both compute
the same function.

    PYTHONPATH=. python scripts/bench_decoder.py [--rounds 3] [--batch 8] [--seq 256] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", "AVX512")  # before MKL loads (see bench_pretrain.py)

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tljax import engine, lora, memory, policy
from tljax import sharding as shd
from tljax.defaults import finetune_config
from tljax.finetune import merge_pretrained
from tljax.init_from import resolve
from tljax.models import LanguageModel, SequenceClassifier
from tljax.tasks import classify

TARGETS = lora.DEFAULT_TARGETS


class TljaxBench:
    def __init__(self, pre, ids: np.ndarray, labels: np.ndarray, rank: int, alpha: float):
        cfg = pre.model
        self.ids, self.mask, self.labels = jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)), jnp.asarray(labels)
        lm = LanguageModel(cfg)
        self.lm_params = jax.device_put(pre.params)
        self.forward_fn = jax.jit(lambda p, i: lm.apply({"params": p}, i))
        # The fine-tuning step, as finetune._run_gradient builds it for strategy=lora.
        self.model = SequenceClassifier(cfg, 2, pooling="last", head_dropout=0.0)
        ids1, mask1 = ids[:1], np.ones_like(ids[:1])
        model_init = lambda r: self.model.init(r, ids1, mask1)["params"]
        splits = lora.plan(jax.eval_shape(model_init, jax.random.key(0)), TARGETS)
        fresh = jax.tree.map(np.asarray, jax.jit(lambda r: nn.meta.unbox(model_init(r)))(jax.random.key(0)))
        start, _ = merge_pretrained(fresh, pre.params)
        start[lora.KEY] = jax.tree.map(np.asarray, jax.jit(lambda r: lora.init(splits, rank, r))(jax.random.key(1)))
        self.adapter_params = lora.count(start)
        self.train_cfg = finetune_config().train
        self.train_cfg.update(steps=1000, lr=1e-3, warmup_steps=0)
        self.mesh_cfg = ml_collections.ConfigDict(dict(axes=("data",), shape=(1,)))
        scale = alpha / rank
        init_fn = lambda r: {**model_init(r), lora.KEY: lora.init(splits, rank, r)}
        self.run = engine.setup(init_fn, self.train_cfg, self.mesh_cfg, shd.DEFAULT_RULES, 0,
                                rules=policy.lora_rules(), start_params=start)
        self.loss = classify.train_loss(self.model, lambda p, r: lora.merge(p, scale, r, 0.0))
        rep = shd.replicated(self.run.mesh)
        self.step_fn = engine.compile_train_step(self.loss, self.run, (rep, rep, rep))
        self.state = self.run.state
        self.model_init = model_init

    def forward(self) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self.forward_fn(self.lm_params, self.ids))
        return time.perf_counter() - t0

    def lora_step(self) -> float:
        t0 = time.perf_counter()
        with shd.mesh_context(self.run.mesh, self.run.rules):
            self.state, metrics = self.step_fn(self.state, self.ids, self.mask, self.labels)
            jax.block_until_ready((self.state, metrics))
        self.last_loss = float(metrics["loss"])
        return time.perf_counter() - t0

    def memory(self) -> dict:
        """Compiled memory of the LoRA step and of a full fine-tuning step (compiled only)."""
        specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shd.replicated(self.run.mesh))
                 for a in (self.ids, self.mask, self.labels)]
        out = {}
        with shd.mesh_context(self.run.mesh, self.run.rules):
            out["lora"] = memory.train_step_memory(self.step_fn, self.state, *specs)
        full = engine.setup(self.model_init, self.train_cfg, self.mesh_cfg, shd.DEFAULT_RULES, 0,
                            rules=policy.strategy_rules("full", self.model.cfg.num_layers))
        rep = shd.replicated(full.mesh)
        full_step = engine.compile_train_step(classify.train_loss(self.model), full, (rep, rep, rep))
        with shd.mesh_context(full.mesh, full.rules):
            out["full"] = memory.train_step_memory(full_step, full.state, *specs)
        del full
        return out


class TorchBench:
    def __init__(self, folder: str, ids: np.ndarray, labels: np.ndarray, rank: int, alpha: float):
        import torch
        from transformers import LlamaForCausalLM
        self.torch = torch
        torch.manual_seed(0)
        self.lm = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
        self.ids, self.labels = torch.from_numpy(ids).long(), torch.from_numpy(labels).long()
        # LoRA by hand on a second copy of the backbone: frozen base, A [in, r] and B [r, out] per q/v projection.
        self.backbone = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).model.train()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        scale, self.adapters = alpha / rank, []

        def adapt(linear):
            a = torch.nn.Parameter(torch.randn(linear.in_features, rank) / linear.in_features ** 0.5)
            b = torch.nn.Parameter(torch.zeros(rank, linear.out_features))
            base_forward = linear.forward
            linear.forward = lambda x: base_forward(x) + scale * ((x @ a) @ b)
            self.adapters += [a, b]

        for layer in self.backbone.layers:
            adapt(layer.self_attn.q_proj)
            adapt(layer.self_attn.v_proj)
        self.head = torch.nn.Linear(self.backbone.config.hidden_size, 2)
        self.trainable = self.adapters + list(self.head.parameters())
        self.opt = torch.optim.AdamW(self.trainable, lr=1e-3, weight_decay=0.01, eps=1e-6, foreach=True)

    def forward(self) -> float:
        torch = self.torch
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.lm(input_ids=self.ids).logits
        return time.perf_counter() - t0

    def lora_step(self) -> float:
        torch = self.torch
        t0 = time.perf_counter()
        hidden = self.backbone(input_ids=self.ids).last_hidden_state
        logits = self.head(hidden[:, -1])  # last token (no padding)
        loss = torch.nn.functional.cross_entropy(logits, self.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = loss.item()
        return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="hf:smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="calls per framework and round (their mean is timed)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip compiling the full fine-tuning step")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    import torch
    from tljax import hf
    torch.set_num_threads(args.threads)

    pre = resolve(args.model)
    rng = np.random.default_rng(0)
    ids = rng.integers(10, pre.model.vocab_size, (args.batch, args.seq)).astype(np.int32)
    labels = (np.arange(args.batch) % 2).astype(np.int32)
    tokens = args.batch * args.seq
    with tempfile.TemporaryDirectory() as folder:
        hf.export_hf(pre, folder)
        tb = TorchBench(folder, ids, labels, args.rank, args.alpha)
    jb = TljaxBench(pre, ids, labels, args.rank, args.alpha)
    # Warm-up (compilation for tljax, allocator and MKL kernels for PyTorch); checks that both agree.
    jb.forward(), tb.forward(), jb.lora_step(), tb.lora_step()
    with torch.inference_mode():
        torch_logits = tb.lm(input_ids=tb.ids[:1, :32]).logits.numpy()
    jax_logits = np.asarray(jb.forward_fn(jb.lm_params, jb.ids[:1, :32]))
    parity = float(np.abs(torch_logits - jax_logits).max())
    rows = []
    for r in range(args.rounds):
        # Several calls in a row per framework: the first call after the other framework's turn pays for
        # its threads and freed memory (single calls swung tljax's LoRA step between 4.6 and 9.6 s).
        each = lambda fn: sum(fn() for _ in range(args.steps)) / args.steps
        t = {"tljax_forward": each(jb.forward), "torch_forward": each(tb.forward),
             "tljax_lora": each(jb.lora_step), "torch_lora": each(tb.lora_step)}
        rows.append(t)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()), flush=True)
    fwd_ratio = statistics.median(r["torch_forward"] / r["tljax_forward"] for r in rows)
    lora_ratio = statistics.median(r["torch_lora"] / r["tljax_lora"] for r in rows)
    med = lambda k: statistics.median(r[k] for r in rows)
    result = {
        "model": args.model, "batch": args.batch, "seq": args.seq, "rounds": args.rounds, "steps": args.steps, "threads": args.threads,
        "rank": args.rank, "targets": list(TARGETS), "adapter_params": jb.adapter_params,
        "cpu": platform.processor() or platform.machine(), "jax": jax.__version__, "torch": torch.__version__,
        "logits_max_abs_diff": parity, "round_seconds": rows,
        "forward_tokens_per_s": {"tljax": tokens / med("tljax_forward"), "torch": tokens / med("torch_forward")},
        "lora_step_tokens_per_s": {"tljax": tokens / med("tljax_lora"), "torch": tokens / med("torch_lora")},
        "forward_ratio": fwd_ratio, "lora_step_ratio": lora_ratio,
    }
    if not args.no_memory:
        result["memory"] = jb.memory()
    print(f"\nSmolLM2-135M on {args.threads} CPU threads, batch {args.batch} x {args.seq}, median of {args.rounds} "
          f"alternating rounds (logits parity {parity:.1e})")
    print(f"{'':24}{'tljax tok/s':>12}{'torch tok/s':>12}{'tljax/torch':>12}")
    for name, key, ratio in (("forward", "forward_tokens_per_s", fwd_ratio),
                             (f"LoRA step (r={args.rank}, q,v)", "lora_step_tokens_per_s", lora_ratio)):
        print(f"{name:24}{result[key]['tljax']:>12.0f}{result[key]['torch']:>12.0f}{ratio:>11.2f}x")
    if "memory" in result:
        mib = lambda v: "n/a" if v is None else f"{v / 2**20:.0f}"
        print(f"\ncompiled step memory (MiB)   {'params':>8}{'optimizer':>10}{'temporaries':>12}{'arguments':>10}")
        for name, m in result["memory"].items():
            print(f"{name + ' fine-tuning':29}{mib(m['params_bytes_per_device']):>8}"
                  f"{mib(m['opt_state_bytes_per_device']):>10}{mib(m['temp_bytes']):>12}{mib(m['argument_bytes']):>10}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
