"""Run every transfer strategy (and the scratch baseline) from one pretraining run on one labeled set
and print a markdown table: the numbers in docs/transfer.md.

    python scripts/transfer_table.py --init_from runs/bert_tiny --num_labeled 100 --out runs/transfer_100

Each cell is a normal `tljax finetune` run in OUT/<method> (re-running skips finished cells).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

METHODS = {  # name -> extra --config flags
    "scratch (init_from=none)": ["--config.strategy=full", "--config.init_from=none", "--config.model_like={init}"],
    "features (mean-pool + logreg)": ["--config.strategy=features"],
    "light (top 2 layers + head)": ["--config.strategy=light"],
    "full": ["--config.strategy=full"],
    "progressive": ["--config.strategy=progressive"],
    "full + layer_lr_decay 0.8": ["--config.strategy=full", "--config.layer_lr_decay=0.8"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init_from", required=True)
    ap.add_argument("--num_labeled", type=int, default=100)
    ap.add_argument("--out", required=True)
    ap.add_argument("--extra", nargs="*", default=[], help="more --config.* flags for every cell")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for name, flags in METHODS.items():
        workdir = out / name.split(" ")[0].replace("+", "").strip()
        if name.startswith("full +"):
            workdir = out / "full_lld"
        summary_path = workdir / "summary.json"
        if not summary_path.exists():
            cmd = [sys.executable, "-m", "tljax.cli", "finetune", "--config", "configs/finetune_classify.py",
                   "--workdir", str(workdir), f"--config.init_from={args.init_from}",
                   f"--config.data.num_labeled={args.num_labeled}",
                   *[f.format(init=args.init_from) for f in flags], *args.extra]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        s = json.loads(summary_path.read_text())
        f = s.get("forgetting") or {}
        rows.append((name, s["test_accuracy"], s["test_macro_f1"], s["trainable_params"], s["frozen_params"],
                     s["optimizer_state_bytes"], f.get("increase"), s["wall_seconds"]))
    print(f"\n{args.num_labeled or 'all'} labels, init_from={args.init_from}\n")
    print("| method | test acc | macro-F1 | trainable | frozen | optimizer state | MLM loss increase | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, acc, f1, tr, fr, ob, inc, wall in rows:
        inc_s = "–" if inc is None else f"{inc:+.3f}"
        print(f"| {name} | {acc:.3f} | {f1:.3f} | {tr:,} | {fr:,} | {ob / 1e6:.1f} MB | {inc_s} | {wall:.0f} |")


if __name__ == "__main__":
    main()
