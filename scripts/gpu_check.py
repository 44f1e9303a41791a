"""Accelerator check: BERT-base masked-LM training at sequence length 512 in bf16 on one device.

    python scripts/gpu_check.py                         # on a GPU / TPU machine: < 5 minutes start to finish
    python scripts/gpu_check.py --peak_flops 1.2e15     # a chip not in PEAK_BF16_FLOPS
    python scripts/gpu_check.py --tiny --steps 3        # a tiny model, for CPU (the test suite runs this)

Prints the compiled step's memory (``tljax.memory``), the median step time, tokens/s and the model FLOP
utilisation (MFU) against the chip's dense bf16 peak. The step is the trainer's own (configs/bert_base_mlm.py
with seq 512: MLM masking on device, AdamW, jit with donation; ``tljax.tasks.lm.build``), fed **synthetic**
uniform token ids, which cost the same FLOPs as text: no tokenizer, corpus or download is needed.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import time

T_START = time.perf_counter()

import jax

from tljax import memory
from tljax import sharding as shd
from tljax.tasks.lm import build, random_batch, train_flops

# Dense (no sparsity) bf16 peak FLOP/s per chip, by a substring of jax's device_kind; first match wins.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12), ("TPU v6e", 918e12),
)


def peak_flops(device_kind: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in device_kind), None)


def base_config(tiny: bool):
    path = pathlib.Path(__file__).parents[1] / "configs" / "bert_base_mlm.py"
    spec = importlib.util.spec_from_file_location("bert_base_mlm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.vocab_size = 30592  # BERT's 30522 WordPiece tokens, rounded up to 128 as the trainer does
    c.data.seq_len = 512
    if tiny:
        c.model.update(vocab_size=1024, hidden_size=64, num_layers=2, num_heads=2, mlp_dim=256, max_len=64)
        c.data.seq_len = 64
    c.mesh.shape = (1, 1, 1)
    return c


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (default 32; 8 with --tiny)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps, after 3 warm-up steps")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    parser.add_argument("--scan_layers", action="store_true", help="one scanned layer body: faster compile")
    parser.add_argument("--peak_flops", type=float, default=None, help="the chip's peak FLOP/s, if not in the table")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model at seq 64, for CPU")
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    peak = args.peak_flops or peak_flops(device.device_kind)
    if peak is None and not args.tiny:
        sys.exit(f"gpu_check: no peak FLOP/s known for device_kind {device.device_kind!r}; "
                 f"pass --peak_flops (dense bf16 FLOP/s of one chip)")
    config = base_config(args.tiny)
    config.model.update(dtype=args.dtype, remat=args.remat, scan_layers=args.scan_layers)
    config.data.batch_size = 8 if args.tiny and args.batch == 32 else args.batch
    s = build(config, devices=[device])
    batch = random_batch(s.batch, s.cfg.vocab_size, seed=0)
    B, T = s.batch.shape
    print(f"device: {device.device_kind} ({jax.default_backend()}); model: {s.cfg.num_layers} layers, hidden "
          f"{s.cfg.hidden_size}, {args.dtype}, remat={args.remat}, scan={args.scan_layers}; batch {B} x {T} "
          f"synthetic tokens", flush=True)

    with shd.mesh_context(s.mesh, s.rules):
        t0 = time.perf_counter()
        mem = memory.train_step_memory(s.step, s.state, s.batch)  # compiles the step
        compile_s = time.perf_counter() - t0
        print(f"compiled in {compile_s:.1f}s; {memory.describe(mem)}", flush=True)
        state = s.state
        for _ in range(3):  # warm-up
            state, metrics = s.step(state, batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            state, metrics = s.step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)

    step_s = statistics.median(times)
    flops = train_flops(s.cfg, B, T, "mlm")
    mfu = "n/a (no peak FLOP/s for this device)" if peak is None else f"{flops / step_s / peak:.1%} of {peak:.3g}"
    print(f"loss {float(metrics['loss']):.3f} after {args.steps + 3} steps")
    print(f"step {step_s * 1e3:.1f} ms (median of {args.steps}), {B * T / step_s:,.0f} tokens/s, "
          f"{flops / step_s:.3g} model FLOP/s ({flops:.3g} FLOP per step), MFU {mfu}")
    print(f"total {time.perf_counter() - T_START:.0f}s from start")


if __name__ == "__main__":
    main()
