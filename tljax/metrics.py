"""Run outputs: metrics as JSON lines + TensorBoard events, and a progress bar. Process 0 only."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from tljax.utils import atomic_write_text, is_lead_process, json_safe


def _row_step(line: str) -> int | None:
    """The step of a metrics.jsonl line, None for a torn (half-written) line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricWriter:
    """Appends ``{"step": s, **scalars}`` to ``workdir/metrics.jsonl`` and writes TensorBoard scalars.

    resume_step: the step the run (re)starts from. Rows of later steps, written by an earlier attempt
    that was stopped before its next checkpoint, are dropped from metrics.jsonl, and TensorBoard is told to
    purge them, so the steps replayed after a resume appear once."""

    def __init__(self, workdir: str | Path, enabled: bool | None = None, resume_step: int | None = None):
        self.enabled = is_lead_process() if enabled is None else enabled
        self._jsonl = self._tb = None
        if self.enabled:
            workdir = Path(workdir)
            path = workdir / "metrics.jsonl"
            if resume_step is not None and path.exists():
                kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                        if _row_step(line) is not None and _row_step(line) <= resume_step]
                atomic_write_text(path, "".join(kept))
            self._jsonl = open(path, "a", encoding="utf-8")
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=10,
                                     purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, scalars: dict, prefix: str = ""):
        if not self.enabled:
            return
        clean = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps(json_safe({"step": int(step), **clean}), allow_nan=False) + "\n")
        self._jsonl.flush()
        for k, v in clean.items():
            if math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def close(self):
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


class Progress:
    """A tqdm bar over steps (ETA included) on a terminal; plain log lines every ``log_every`` otherwise."""

    def __init__(self, total: int, initial: int, desc: str, log_every: int):
        self.enabled = is_lead_process()
        self.tty = sys.stderr.isatty()
        self.log_every = max(1, log_every)
        self.total, self.start_step, self.t0 = total, initial, time.time()
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                        disable=not (self.enabled and self.tty))

    def update(self, step: int, postfix: dict):
        if not self.enabled:
            return
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        if self.tty:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(text, refresh=False)
        elif step % self.log_every == 0 or step == self.total:
            done = step - self.start_step
            elapsed = time.time() - self.t0
            eta = elapsed / done * (self.total - step) if done else float("nan")
            print(f"step {step}/{self.total} {text} eta={eta:.0f}s", flush=True)

    def close(self):
        self.bar.close()
