"""Small shared helpers every layer may use: logging from the lead process, atomic and strict-JSON
writes, the data cache directory. Imports nothing from tljax, so any module can import it."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax


def is_lead_process() -> bool:
    """True in process 0 (the one that prints and writes run outputs)."""
    return jax.process_index() == 0


def log(msg: str) -> None:
    """Print ``msg`` from process 0 only, flushed (logs interleave with progress bars)."""
    if is_lead_process():
        print(msg, flush=True)


def cache_dir() -> Path:
    """Root of the tljax data cache (``$TLJAX_DATA_DIR``, default ``~/.cache/tljax``)."""
    return Path(os.environ.get("TLJAX_DATA_DIR", "~/.cache/tljax")).expanduser()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers (and a crash) see the old
    file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def json_safe(value):
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN/Infinity) and numpy
    scalars/arrays turned into Python numbers/lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy / jax scalars and arrays
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, value, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Strict JSON (non-finite floats as null), written atomically."""
    atomic_write_text(path, json.dumps(json_safe(value), indent=indent, allow_nan=False, sort_keys=sort_keys) + "\n")
