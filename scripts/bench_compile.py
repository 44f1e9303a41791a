"""Compile time of the pretraining train step, per-layer vs scanned layers (``model.scan_layers``).

    python scripts/bench_compile.py                       # 12 and 24 layers, tiny width, ~3 min on 2 cores
    python scripts/bench_compile.py --layers 12 --rounds 3

The step is the trainer's own (``tljax.tasks.lm.build``: MLM loss, AdamW, jit with shardings and
donation) on one device. Each round times tracing + lowering and XLA compilation separately for both
layouts (alternating which goes first), then a few executed steps; the table shows medians over rounds,
and the compiled step's temporaries (``memory_analysis``) and its HLO size.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax

from tljax import sharding as shd
from tljax.defaults import pretrain_config
from tljax.tasks.lm import build, random_batch


def config(layers: int, scan: bool, remat: str):
    c = pretrain_config("mlm", "bert")
    c.model.update(vocab_size=8192, hidden_size=128, num_layers=layers, num_heads=4, mlp_dim=512, max_len=128,
                   scan_layers=scan, remat=remat)
    c.data.update(seq_len=128, batch_size=16)
    c.mesh.shape = (1, 1, 1)
    return c


def measure(layers: int, scan: bool, remat: str, steps: int) -> dict:
    """Seconds to lower and to compile, HLO text size, temp bytes, and the median executed step time."""
    s = build(config(layers, scan, remat), devices=jax.devices()[:1])
    with shd.mesh_context(s.mesh, s.rules):
        t0 = time.perf_counter()
        lowered = s.step.lower(s.state, s.batch)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        state, times = s.state, []
        batch = random_batch(s.batch, 8192, 0)
        for _ in range(steps + 1):  # the first call also builds the executable's runtime state
            t = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
    return {"lower_s": t1 - t0, "compile_s": t2 - t1, "hlo_kchars": len(compiled.as_text()) / 1e3,
            "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20,
            "step_s": statistics.median(times[1:])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; hidden 128, 4 heads, MLP 512, seq 128, "
          f"batch 16, vocab 8192, remat={args.remat}")
    print(f"| layers | layout | lower s | compile s | HLO kchars | temp MiB | step s |")
    print(f"| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for layers in args.layers:
        runs = {False: [], True: []}
        for r in range(args.rounds):
            for scan in ((False, True) if r % 2 == 0 else (True, False)):
                runs[scan].append(measure(layers, scan, args.remat, args.steps))
        for scan in (False, True):
            med = {k: statistics.median(m[k] for m in runs[scan]) for k in runs[scan][0]}
            print(f"| {layers} | {'scan' if scan else 'per-layer'} | {med['lower_s']:.2f} | {med['compile_s']:.2f} "
                  f"| {med['hlo_kchars']:.0f} | {med['temp_mib']:.0f} | {med['step_s']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
