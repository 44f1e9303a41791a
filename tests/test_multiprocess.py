"""Multi-process runs on one machine (JAX's distributed runtime, gloo collectives on CPU): 2 processes × 2
devices give the losses of 1 process × 4 devices, their checkpoint resumes in 1 process on 1 device, and
fine-tuning agrees too. Launch flags that cannot work end in one line and exit status 2.

The runs are subprocesses (about 100 s of CPU in all, two at a time where they can run side by side):
marked slow, they run with ``-m slow`` and in CI."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_pretrain_config
from test_finetune import csv_task, ft_config  # noqa: F401 (csv_task is a fixture)
from tljax import cli
from tljax.data import lm as lm_data
from tljax.distributed import Launch, resolve_launch

TESTS = Path(__file__).parent
STEPS = 8  # the 2-process run stops at STEPS // 2; a 1-process run resumes it to STEPS
LAUNCH_ENV = ("TLJAX_DISTRIBUTED", "TLJAX_COORDINATOR", "TLJAX_NUM_PROCESSES", "TLJAX_PROCESS_ID")


def pretrain_config(corpus):
    config = tiny_pretrain_config("mlm", "bert", corpus, steps=STEPS, log_every=1, eval_every=STEPS // 2,
                                  checkpoint_every=STEPS // 2)
    config.mesh.shape = (-1, 1, 1)  # every device of the run, whatever the processes
    return config


def finetune_config(run, task):
    config = ft_config(run, task, "full")
    config.train.steps = 40  # enough to learn the task's marker words: the accuracies compared are not chance
    config.forgetting.enabled = False  # a process-local evaluation: nothing multi-process to check, 2 compiles
    config.mesh.shape = (-1, 1, 1)
    return config


def config_file(path: Path, call: str) -> Path:
    """A config file (what the CLI takes) whose get_config returns ``call`` of this module."""
    path.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport test_multiprocess\n\n\n"
                    f"def get_config():\n    return test_multiprocess.{call}\n")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The runs' environment: the session's data cache (see conftest), no inherited launch variables."""
    out = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    out.update(TLJAX_DATA_DIR=str(tmp_path_factory.getbasetemp() / "tljax_cache"), JAX_PLATFORMS="cpu")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(env: dict, command: str, config: Path, workdir: Path, *overrides: str, processes: int = 1,
          devices: int = 4) -> list[subprocess.Popen]:
    """Start ``tljax COMMAND`` in ``processes`` processes of ``devices`` CPU devices each (a single process
    gets no launch flags). Several runs started before ``finish`` share the 2 cores."""
    port, procs = free_port(), []
    for i in range(processes):
        # LLVM -O0 halves the compile time of these tiny programs; every run compared uses the same flags.
        penv = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                                   f"--xla_backend_optimization_level=0")
        # Process 0 is launched with flags, the others with environment variables: both paths run.
        flags = [f"--coordinator=127.0.0.1:{port}", f"--num_processes={processes}", "--process_id=0"]
        if i:
            flags = []
            penv.update(TLJAX_COORDINATOR=f"127.0.0.1:{port}", TLJAX_NUM_PROCESSES=str(processes),
                        TLJAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tljax.cli", command, "--config", str(config), "--workdir", str(workdir),
             *overrides, *(flags if processes > 1 else [])],
            env=penv, cwd=TESTS.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for a run's processes; assert they succeeded and return their stdouts."""
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:  # a process stuck in a collective would outlive the test (it ignores SIGTERM)
            p.kill()
    for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{err[-4000:]}"
    # gloo prints its connection lines itself, in every process
    return ["".join(l for l in out.splitlines(True) if not l.startswith("[Gloo]")) for out, _ in outputs]


def metrics(workdir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if key in r]
    assert len(steps) == len(set(steps)), f"{key} written twice for a step: more than one process wrote"
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.fixture(scope="module")
def pretrain_runs(text_corpus, env, tmp_path_factory):
    """Side by side: 1 process × 4 devices for STEPS steps, and 2 processes × 2 devices stopped at STEPS // 2.
    Returns their workdirs and the 2 processes' stdouts."""
    root = tmp_path_factory.mktemp("pretrain")
    one, two = root / "one_process", root / "two_processes"
    # Tokenizer training breaks ties differently in every process: train it once, before the runs, so
    # that both load it from the cache.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLJAX_DATA_DIR", env["TLJAX_DATA_DIR"])
        lm_data.setup_tokenizer(pretrain_config(text_corpus), one)
    config = config_file(root / "config.py", f"pretrain_config({str(text_corpus)!r})")
    runs = [start(env, "pretrain", config, one),
            start(env, "pretrain", config, two, f"--config.train.run_steps={STEPS // 2}", processes=2, devices=2)]
    stdouts = [finish(r) for r in runs]
    return one, two, stdouts[1]


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one(pretrain_runs):
    one, two, stdouts = pretrain_runs
    assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in stdouts[0]  # one mesh over both processes' devices
    assert "eval loss" in stdouts[0] and stdouts[1] == ""  # process 0 alone reports
    loss, one_loss = metrics(two, "train/loss"), metrics(one, "train/loss")
    half = list(range(1, STEPS // 2 + 1))
    assert [s for s in sorted(loss) if s <= STEPS // 2] == half
    np.testing.assert_allclose([loss[s] for s in half], [one_loss[s] for s in half], rtol=1e-5)
    np.testing.assert_allclose(metrics(two, "eval/loss")[STEPS // 2], metrics(one, "eval/loss")[STEPS // 2],
                               rtol=1e-5)
    assert (two / "checkpoints" / str(STEPS // 2)).is_dir()


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process_on_one_device(pretrain_runs, env):
    one, two, _ = pretrain_runs
    finish(start(env, "pretrain", two.parent / "config.py", two, devices=1))
    loss, one_loss = metrics(two, "train/loss"), metrics(one, "train/loss")
    steps = list(range(1, STEPS + 1))
    np.testing.assert_allclose([loss[s] for s in steps], [one_loss[s] for s in steps], rtol=1e-5)
    summary, one_summary = (json.loads((w / "summary.json").read_text()) for w in (two, one))
    assert summary["steps_this_run"] == STEPS // 2
    np.testing.assert_allclose(summary["eval_loss"], one_summary["eval_loss"], rtol=1e-5)


@pytest.mark.slow
def test_finetuning_in_two_processes_matches_one(pretrain_runs, csv_task, env, tmp_path):
    one_run = pretrain_runs[0]
    config = config_file(tmp_path / "config.py", f"finetune_config({str(one_run)!r}, {str(csv_task)!r})")
    runs = [start(env, "finetune", config, tmp_path / "one_process"),
            start(env, "finetune", config, tmp_path / "two_processes", processes=2, devices=2)]
    for r in runs:
        finish(r)
    one, two = (json.loads((tmp_path / w / "summary.json").read_text()) for w in ("one_process", "two_processes"))
    assert two["test_accuracy"] == one["test_accuracy"] > 0.6 and two["best_step"] == one["best_step"]
    assert two["test_macro_f1"] == one["test_macro_f1"]
    assert [c["accuracy"] for c in two["validation_curve"]] == [c["accuracy"] for c in one["validation_curve"]]
    for key in ("loss", "train_loss"):
        np.testing.assert_allclose([c[key] for c in two["validation_curve"]],
                                   [c[key] for c in one["validation_curve"]], rtol=1e-5)


@pytest.mark.slow
def test_an_error_in_process_0_ends_every_process(text_corpus, env, tmp_path):
    """Process 0 prepares the tokenizer alone; when that fails, the others stop too instead of waiting."""
    config = config_file(tmp_path / "config.py", f"pretrain_config({str(text_corpus)!r})")
    procs = start(env, "pretrain", config, tmp_path / "run", "--config.data.source=text:/nonexistent/*.txt",
                  processes=2, devices=1)
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    errors = [[l for l in e.splitlines() if l.startswith("tljax: error:")] for e in errors]
    assert [p.returncode for p in procs] == [2, 2]
    assert len(errors[0]) == 1 and "no file matches '/nonexistent/*.txt'" in errors[0][0]
    assert errors[1] == ["tljax: error: process 0 failed while preparing the tokenizer; its output names the problem"]


def test_launch_from_flags_or_environment():
    assert resolve_launch({}, {}) == Launch("single")
    env = {"TLJAX_COORDINATOR": "10.0.0.1:1234", "TLJAX_NUM_PROCESSES": "4", "TLJAX_PROCESS_ID": "3"}
    assert resolve_launch({}, env) == Launch("manual", "10.0.0.1:1234", 4, 3)
    assert resolve_launch({"process_id": "0"}, env) == Launch("manual", "10.0.0.1:1234", 4, 0)  # flags win
    assert resolve_launch({"distributed": "auto"}, {}) == Launch("auto")


@pytest.mark.parametrize("args,env,message", [
    (["--coordinator=127.0.0.1:1234", "--num_processes=2", "--process_id=2"], {},
     "--process_id (TLJAX_PROCESS_ID)=2 must be in [0, 2)"),
    (["--coordinator=127.0.0.1", "--num_processes=2", "--process_id=0"], {}, "is not HOST:PORT"),
    (["--coordinator=127.0.0.1:99999", "--num_processes=2", "--process_id=0"], {}, "is not HOST:PORT"),
    (["--num_processes=2"], {"TLJAX_PROCESS_ID": "1"}, "missing --coordinator (TLJAX_COORDINATOR)"),
    (["--coordinator=h:1"], {"TLJAX_NUM_PROCESSES": "two", "TLJAX_PROCESS_ID": "0"},
     "--num_processes (TLJAX_NUM_PROCESSES)='two' is not an integer"),
    (["--distributed=auto", "--process_id=1"], {}, "drop --process_id (TLJAX_PROCESS_ID)"),
    (["--distributed=yes"], {}, "--distributed (TLJAX_DISTRIBUTED)='yes' unknown"),
])
def test_bad_launch_flags_are_one_line_errors(args, env, message, tmp_path, monkeypatch, capsys):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["pretrain", "--config", str(TESTS.parent / "configs" / "bert_mlm_tiny.py"),
                  "--workdir", str(workdir), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not workdir.exists()
