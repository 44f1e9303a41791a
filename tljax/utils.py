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


def enable_compilation_cache() -> Path:
    """Keep XLA compilations on disk under the tljax cache (``xla_cache``), so a run of a model and shapes
    that an earlier run compiled loads them instead of compiling (MiniLM fine-tuning: seconds per shape).
    Only compilations that took ≥ 1 s are stored. Returns the folder."""
    folder = cache_dir() / "xla_cache"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return folder


# Seconds JAX spent turning functions into executables: tracing, lowering to StableHLO, and the backend
# compile (or its load from the persistent cache), summed over all threads since the first call of
# ``compile_seconds``.
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_total: list[float] | None = None


def compile_seconds() -> float:
    """Total compile seconds (see ``_COMPILE_EVENTS``) since the first call; a run takes the difference
    of two calls."""
    global _compile_total
    if _compile_total is None:
        _compile_total = [0.0]

        def listen(event: str, seconds: float, **_):
            if event in _COMPILE_EVENTS:
                _compile_total[0] += seconds

        jax.monitoring.register_event_duration_secs_listener(listen)
    return _compile_total[0]
