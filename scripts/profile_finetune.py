"""Where the MiniLM classifier's train step and inference spend their time on XLA:CPU: op time by kind.

Builds the tljax train step and evaluation function exactly as ``scripts/bench_finetune.py`` (and
``tljax finetune``) do, runs a few of each under ``jax.profiler.trace``, and sums every XLA op's duration
(over threads) by what it is. Each op (a fusion, a YNNPACK dot fusion, a copy…) is looked up in the compiled
HLO: its opcode and the ``op_name`` metadata of its root say where it comes from (``transpose(jvp(...))`` =
backward pass, ``attention``/``mlp``/``_ln`` = the Flax module, ``erf``/``softmax``/``threefry`` = the
operation), and ``ynn``/``dot`` fusions are the matmuls.

    python scripts/profile_finetune.py                   # train 32 x 64 and inference 128 x 64
    XLA_FLAGS=--xla_cpu_... python scripts/profile_finetune.py --steps 5
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_finetune import INFER_BATCH, LENGTH, TRAIN_BATCH, Tljax, review_texts  # noqa: E402

from tljax.init_from import resolve  # noqa: E402
from tljax.tasks import classify  # noqa: E402

import numpy as np  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\((.*)$")


def hlo_index(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """instruction name -> (opcode, op_name metadata, fusion kind/callee text) for every instruction."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            name, opcode, rest = m.groups()
            op_name = re.search(r'op_name="([^"]*)"', rest)
            out[name] = (opcode, op_name.group(1) if op_name else "", rest)
    return out


def kind_of(name: str, index: dict) -> str:
    """A coarse label of one executed op: pass (forward / backward / update) and what it computes."""
    opcode, op_name, rest = index.get(name, ("?", "", ""))
    low = op_name.lower()
    if "transpose(jvp" in low or "transpose(" in low:
        phase = "backward"
    elif "jvp(" in low or "train_step" not in low and op_name:
        phase = "forward"
    else:
        phase = "update" if op_name else "?"
    if name.startswith("ynn") or "dot" in name or opcode in ("dot", "custom-call") or "__ynn" in rest:
        what = "matmul"
    elif opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        what = "layout copy/transpose"
    elif "threefry" in low or "random_bits" in low or "dropout" in low:
        what = "dropout (random bits, mask)"
    elif "erf" in low or "/mlp/" in low and "gelu" in low:
        what = "GELU"
    elif "softmax" in low or "attention" in low and ("exp" in low or "reduce_max" in low or "select" in low):
        what = "attention softmax/mask/scale"
    elif "_ln" in low or "layernorm" in low or "layer_norm" in low:
        what = "LayerNorm"
    elif "optax" in low or "adam" in low or "clip" in low or phase == "update":
        what = "optimizer (AdamW, clipping, update)"
    elif opcode == "fusion" and "reduce" in rest:
        what = "other reductions"
    else:
        what = "other element-wise"
    return f"{phase}: {what}" if what not in ("optimizer (AdamW, clipping, update)",) else what


def profile(fn, hlo_text: str, reps: int) -> list[tuple[str, float, float]]:
    """Run ``fn`` reps times under the profiler; [(kind, ms per call, share)] sorted by time."""
    index = hlo_index(hlo_text)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(reps):
                fn()
        trace = json.load(gzip.open(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    by_kind, by_op = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and name in index:
            by_kind[kind_of(name, index)] += e["dur"]
            by_op[name] += e["dur"]
    total = sum(by_kind.values())
    rows = [(k, us / 1e3 / reps, us / total) for k, us in by_kind.most_common()]
    top = [(n, us / 1e3 / reps, us / total, index[n][1][-90:]) for n, us in by_op.most_common(12)]
    return rows, top, total / 1e3 / reps


def print_profile(title: str, result) -> None:
    rows, top, total = result
    print(f"\n### {title}: {total:.0f} ms of op time per call (summed over threads)\n")
    print("| share | ms/call | what |\n|---:|---:|---|")
    for k, ms, share in rows:
        print(f"| {100 * share:.1f} % | {ms:.1f} | {k} |")
    print("\nlargest ops:")
    for n, ms, share, op_name in top:
        print(f"  {100 * share:5.1f} % {ms:7.1f} ms  {n:32s} {op_name}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dump", help="also write the compiled HLO of both functions into this folder")
    args = ap.parse_args(argv)
    pre = resolve("hf:minilm")
    ids, mask = classify.encode_texts(pre.tokenizer, review_texts(INFER_BATCH), LENGTH)
    labels = np.arange(TRAIN_BATCH, dtype=np.int32) % 2
    tl = Tljax(pre, ids[:TRAIN_BATCH], mask[:TRAIN_BATCH], labels)
    b = tl.built
    with tl.mesh_context():
        train_hlo = b.train_step.lower(tl.state, *tl.batch).compile().as_text()
        inf = b.put(ids), b.put(mask)
        infer_hlo = b.logits_fn.lower(tl.params, *inf).compile().as_text()
        if args.dump:
            Path(args.dump).mkdir(parents=True, exist_ok=True)
            Path(args.dump, "train_step.hlo.txt").write_text(train_hlo)
            Path(args.dump, "infer.hlo.txt").write_text(infer_hlo)
        tl.train(2), tl.infer(ids, mask, 2)  # compiled and warm
        print_profile(f"train step {TRAIN_BATCH} x {LENGTH}", profile(lambda: tl.train(1), train_hlo, args.steps))
        print_profile(f"inference {INFER_BATCH} x {LENGTH}",
                      profile(lambda: jax.block_until_ready(b.logits_fn(tl.params, *inf)), infer_hlo, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
