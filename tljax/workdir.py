"""One run per workdir: a lock file, and the refusal to overwrite a finished fine-tuning result.

``workdir/.tljax.lock`` holds the owner's pid, host, start time and command (JSON). It is created
atomically (written to a temporary file, then hard-linked into place, which fails if the lock exists),
before the run writes anything else into the workdir, and removed when the run ends. A second run on the
same workdir stops with a one-line error naming the owner. A lock whose pid no longer runs on this host
(a run killed with SIGKILL), or runs a process started after the lock was taken (a pid reused after a
reboot), is stale and taken over with a message; a lock from another host cannot be checked and is
never taken over. In a multi-process run only process 0 holds the lock (the other processes share the
workdir).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from tljax import config as config_lib
from tljax import distributed
from tljax.utils import is_lead_process, log, write_json

LOCK_NAME = ".tljax.lock"


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (Unix time, from /proc on Linux), or None where that is unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(l.split()[1]) for l in Path("/proc/stat").read_text().splitlines() if l.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_alive(owner: dict) -> bool:
    """Whether the lock's pid still runs the process that took it (a pid reused by a process started
    after the lock, e.g. after a reboot or a container restart, does not count)."""
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    started, taken = _process_start(pid), owner.get("started")
    return not (started is not None and isinstance(taken, (int, float)) and started > taken + 2.0)


def _describe(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {when}"


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def prepare_workdir(workdir: Path) -> None:
    """Create ``workdir`` (and parents) and check it is a writable directory; ConfigError otherwise."""
    if workdir.exists() and not workdir.is_dir():
        raise config_lib.ConfigError(f"--workdir {workdir} is a file, not a directory; give a new or existing "
                                     f"directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise config_lib.ConfigError(f"cannot create --workdir {workdir} ({e.strerror}); give a directory you "
                                     f"can write to") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise config_lib.ConfigError(f"--workdir {workdir} is not writable; give a directory you can write to")


def acquire(workdir: str | Path) -> Path:
    """Create the workdir if needed and take its lock; returns the lock path. Raises ConfigError when
    another live run holds it, or the workdir is not a writable directory."""
    workdir = Path(workdir)
    prepare_workdir(workdir)
    path = workdir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
    tmp = workdir / f"{LOCK_NAME}.{me['host']}.{me['pid']}.tmp"
    try:
        write_json(tmp, me)
        for _ in range(3):
            try:
                os.link(tmp, path)  # atomic: fails when a lock exists
                return path
            except FileExistsError:
                pass
            owner = _read_owner(path)
            if owner is None:  # released meanwhile
                continue
            same_host = owner.get("host") == me["host"]
            pid = owner.get("pid")
            if same_host and isinstance(pid, int) and pid != me["pid"] and not _owner_alive(owner):
                log(f"taking over the stale lock {path} of a run that no longer runs ({_describe(owner)})")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            if not owner:
                raise config_lib.ConfigError(f"{path} exists but cannot be read; if no run uses {workdir}, "
                                             f"delete that file and re-run")
            hint = ("wait for it to finish, stop it, or use another --workdir" if same_host else
                    f"if that run is gone, delete {path}; else use another --workdir")
            raise config_lib.ConfigError(f"{workdir} is in use by another run ({_describe(owner)}); {hint}")
        raise config_lib.ConfigError(f"cannot take the lock {path} (it keeps changing); is another run "
                                     f"starting on {workdir}?")
    except OSError as e:  # read-only, full, or a filesystem that takes no new files
        raise config_lib.ConfigError(f"cannot write in --workdir {workdir} ({e.strerror}); give a directory you "
                                     f"can write to") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def release(path: Path) -> None:
    """Remove the lock at ``path`` if this process still owns it."""
    owner = _read_owner(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def locked(workdir: str | Path):
    """Hold ``workdir``'s lock for the duration of the block (process 0 only in a multi-process run; an
    error taking it stops every process). Creates the workdir."""
    workdir = Path(workdir)
    created = not workdir.exists()
    held = distributed.lead_first("taking the workdir lock", lambda: acquire(workdir), lambda: None)
    try:
        yield
    finally:
        if held is not None and is_lead_process():
            release(held)
            if created:  # a run that stopped before writing anything leaves no empty workdir behind
                with contextlib.suppress(OSError):
                    workdir.rmdir()


def result_settings(tree: dict) -> dict:
    """The flat settings of a fine-tuning config (a dict as in config.json) that decide its result:
    ``overwrite`` and the device layout (``mesh``, ``sharding_rules``) dropped, the default labeled set
    spelled out (runs made before ``data.name`` defaulted to "" saved "rotten_tomatoes")."""
    flat = {k: v for k, v in config_lib.flatten(tree)
            if k not in ("overwrite", "save_model") and not k.startswith(("mesh.", "sharding_rules"))}
    if not flat.get("data.name") and not flat.get("data.train") and not flat.get("data.test"):
        flat["data.name"] = "rotten_tomatoes"
    return flat


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def result_differences(saved: dict, current: dict) -> list[str]:
    """``field: saved -> current`` for every setting that decides a fine-tuning result (``result_settings``)
    and differs between two config dicts."""
    return _differences(result_settings(saved), result_settings(current))


def check_finished_result(config, workdir: str | Path) -> None:
    """Raise ConfigError when ``workdir`` holds a finished result (``summary.json``) of a different config
    than ``config`` and ``config.overwrite`` is not set. The comparison is of every field but ``overwrite``."""
    workdir = Path(workdir)
    summary, saved_path = workdir / "summary.json", workdir / "config.json"
    if config.get("overwrite", False) or not summary.exists():
        return
    try:
        saved = result_settings(json.loads(saved_path.read_text()))
    except (OSError, ValueError):
        saved = None
    if saved is None:
        raise config_lib.ConfigError(f"{workdir} holds a finished result (summary.json) without a readable "
                                     f"config.json; use a new --workdir, or --config.overwrite=True to replace it")
    diffs = _differences(saved, result_settings(config_lib.to_dict(config)))
    if diffs:
        raise config_lib.ConfigError(f"{workdir} holds a finished result of another config ({'; '.join(diffs[:3])}"
                                     f"{' …' if len(diffs) > 3 else ''}); use a new --workdir, or "
                                     f"--config.overwrite=True to replace it")
