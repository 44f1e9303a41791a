"""Nothing lost, nothing silently wrong (issue 13): damaged checkpoints, one run per workdir, one-line
errors for bad input, --help/--version, explicit labeled files, a single text file as the corpus, strict
JSON. Each test fails on the code before these fixes (see docs/reliability.md for the table of inputs)."""
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_pretrain_config as tiny, write_keyword_task
from tljax import cli, pretrain
from tljax.checkpoint import Checkpoints, read_params
from tljax.config import ConfigError

REPO = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


def tiny_config_file(path: Path, corpus: Path, **train) -> Path:
    """A self-contained config file of the conftest tiny run (subprocesses cannot import conftest)."""
    path.write_text(textwrap.dedent(f"""
        from tljax.defaults import pretrain_config
        def get_config(arg=None):
            c = pretrain_config("mlm", "bert")
            c.model.update(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=32)
            c.data.update(source="text:{corpus}/*.txt", eval_source="", holdout=0.1, seq_len=32, batch_size=8)
            c.data.tokenizer.update(vocab_size=300)
            c.train.update(steps=4, warmup_steps=1, lr=3e-3, log_every=2, eval_every=2, checkpoint_every=2,
                           eval_batches=2)
            c.train.update(**{train!r})
            return c  # mesh (-1, 1, 1): all devices (one in this process: the one_device fixture)
        """))
    return path


def run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    """``tljax ARGV`` in this process: (exit status, stderr lines, stdout)."""
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.err.strip().splitlines(), out.out


def latest_step(folder: Path):
    ckpt = Checkpoints(folder)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def tree_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------
# 1. Damaged checkpoints
# ----------------------------------------------------------------------------------------------------
def truncate_state_data(step_dir: Path) -> list[Path]:
    """Cut every array data file (``state/**/d/*``) of a checkpoint step to half its size (which of them
    a restore reads first depends on orbax's layout)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    for victim in files:
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)
    return files


def test_damaged_latest_checkpoints_walk_back_are_kept_and_those_steps_saved_again(text_corpus, tmp_path, capsys):
    workdir = tmp_path / "run"
    config = lambda: tiny("mlm", "bert", text_corpus, steps=6, checkpoint_every=2, eval_every=2)
    capsys.readouterr()
    pretrain.run(tiny("mlm", "bert", text_corpus, steps=6, checkpoint_every=2, eval_every=2, run_steps=4), workdir)
    first = capsys.readouterr().out
    ckpts = workdir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["2", "4"]
    victims = truncate_state_data(ckpts / "4")  # a truncated data file
    damaged_bytes = tree_files(ckpts / "4")
    (ckpts / "6").mkdir()  # an empty step folder (a crash between mkdir and the first write)

    pretrain.run(config(), workdir)
    out = capsys.readouterr().out
    skipped = [l for l in out.splitlines() if "does not restore" in l]
    assert len(skipped) == 2, out
    assert skipped[0].startswith("checkpoint step 6 ") and "(the folder is empty)" in skipped[0]
    assert skipped[1].startswith("checkpoint step 4 ") and "does not restore (ValueError: " in skipped[1]
    assert "resumed from step 2" in out
    # Resuming from step 2 replays steps 3-4 bit-identically: the same model at step 4 as the first time.
    eval_at_4 = lambda log: [l for l in log.splitlines() if l.startswith("step 4: eval loss")]
    assert eval_at_4(out) == eval_at_4(first) and len(eval_at_4(first)) == 1
    # The damaged steps are kept, byte for byte, beside the new steps 4 and 6 that the run saved (orbax
    # would refuse to save over them: "Checkpoint for step 4 already exists").
    aside = {p.name.split(".")[0]: p for p in ckpts.iterdir() if ".damaged-" in p.name}
    assert sorted(aside) == ["4", "6"] and tree_files(aside["4"]) == damaged_bytes
    assert {v.relative_to(ckpts / "4").as_posix() for v in victims} <= set(tree_files(aside["4"]))
    assert latest_step(ckpts) == 6 and (ckpts / "4" / "state").is_dir()
    assert json.loads((workdir / "summary.json").read_text())["steps"] == 6


def small_checkpoints(folder: Path, steps=(2, 4, 6)) -> Checkpoints:
    ckpt = Checkpoints(folder, keep=5, save_every=2)
    for s in steps:
        ckpt.save(s, {"params": {"w": jnp.full((4, 3), float(s))}, "step": jnp.int32(s)}, {"data": s})
    ckpt.close()
    return Checkpoints(folder, keep=5, save_every=2)


def target():
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return {"params": {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32, sharding=device)},
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=device)}


def test_read_params_and_restore_latest_fall_back_and_never_delete(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    small_checkpoints(folder).close()
    (folder / "6" / "state" / "_METADATA").unlink()
    # init_from reads the params without a model: the newest step whose metadata is readable.
    params, step = read_params(folder)
    assert step == 4 and np.array_equal(params["w"], np.full((4, 3), 4.0))
    assert "checkpoint step 6" in capsys.readouterr().out
    assert (folder / "6").is_dir()  # someone else's run: nothing moved
    from tljax.checkpoint import CheckpointError
    # An explicit step that does not restore is a one-line error, not a fallback.
    with pytest.raises(CheckpointError, match="checkpoint step 6 .* does not restore"):
        read_params(folder, 6)

    truncate_state_data(folder / "6")
    ckpt = Checkpoints(folder)
    state, meta, step = ckpt.restore_latest(target())
    assert step == 4 and meta == {"data": 4} and float(state["params"]["w"][0, 0]) == 4.0
    ckpt.close()


def test_no_restorable_checkpoint_is_an_error_and_moves_nothing(tmp_path):
    from tljax.checkpoint import CheckpointError
    folder = tmp_path / "checkpoints"
    small_checkpoints(folder, steps=(2, 4)).close()
    for s in (2, 4):
        truncate_state_data(folder / str(s))
    before = sorted(p.name for p in folder.iterdir())
    ckpt = Checkpoints(folder)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* restores \(step 4: .*step 2: "):
        ckpt.restore_latest(target())
    ckpt.close()
    assert sorted(p.name for p in folder.iterdir()) == before
    empty = Checkpoints(tmp_path / "empty")
    assert empty.restore_latest(target()) is None
    empty.close()


# ----------------------------------------------------------------------------------------------------
# 2. One run per workdir
# ----------------------------------------------------------------------------------------------------
def test_second_run_on_a_locked_workdir_exits_2_naming_the_owner(text_corpus, tmp_path):
    config = tiny_config_file(tmp_path / "tiny.py", text_corpus)
    workdir = tmp_path / "run"
    workdir.mkdir()
    # This process is the running owner (the lock a run takes: pid, host, start time).
    started = time.time()
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "command": "tljax pretrain"}
    (workdir / ".tljax.lock").write_text(json.dumps(lock))
    r = subprocess.run([sys.executable, "-m", "tljax.cli", "pretrain", "--config", str(config),
                        "--workdir", str(workdir)], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"tljax: error: {workdir} is in use by another run (pid {os.getpid()} on {socket.gethostname()}, "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))}); wait for it to finish, stop it, "
        f"or use another --workdir"], r.stderr[-2000:]
    assert sorted(p.name for p in workdir.iterdir()) == [".tljax.lock"]  # the second run wrote nothing
    assert json.loads((workdir / ".tljax.lock").read_text()) == lock


def test_the_lock_is_held_during_a_run_and_released_after(tmp_path):
    from tljax import workdir as workdir_lib
    workdir = tmp_path / "run"
    with workdir_lib.locked(workdir):
        lock = json.loads((workdir / ".tljax.lock").read_text())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {os.getpid()} "):
            workdir_lib.acquire(workdir)  # the same workdir twice, even from one process
    assert not workdir.exists()  # released; the block wrote nothing, so no empty workdir is left


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    from tljax import workdir as workdir_lib
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs (reuse within this test is vanishingly unlikely)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / ".tljax.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with workdir_lib.locked(workdir):
        assert json.loads((workdir / ".tljax.lock").read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {workdir / '.tljax.lock'}" in capsys.readouterr().out
    assert not (workdir / ".tljax.lock").exists()
    # A live pid that started after the lock was taken is not its owner (a pid reused after a reboot).
    (workdir / ".tljax.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": 0}))
    with workdir_lib.locked(workdir):
        pass
    assert "taking over the stale lock" in capsys.readouterr().out
    # A lock held on another host cannot be checked: never taken over.
    (workdir / ".tljax.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(ConfigError, match=r"in use by another run \(pid 1 on elsewhere.*if that run is gone, delete"):
        with workdir_lib.locked(workdir):
            pass


def test_finetune_refuses_to_replace_a_finished_result_of_another_config(tmp_path):
    from tljax import finetune
    from tljax.config import save_config
    from tljax.defaults import finetune_config
    from tljax.pretrained import PretrainedError
    workdir = tmp_path / "ft"
    workdir.mkdir()
    first = finetune_config()
    first.init_from = str(tmp_path / "run_a")
    save_config(first, workdir)
    (workdir / "summary.json").write_text('{"test_accuracy": 0.9}\n')
    before = tree_files(workdir)
    second = finetune_config()
    second.init_from = str(tmp_path / "run_b")
    second.mesh.shape = (1, 1, 1)
    with pytest.raises(ConfigError, match=r"holds a finished result of another config \(init_from: .*run_a' -> "
                                          r".*run_b'\); use a new --workdir, or --config.overwrite=True"):
        finetune.run(second, workdir)
    assert tree_files(workdir) == before
    # With overwrite (or the same config) the run goes on: here to the missing init_from.
    second.overwrite = True
    with pytest.raises(PretrainedError, match="run_b"):
        finetune.run(second, workdir)
    first.mesh.shape = (1, 1, 1)  # the device layout is not part of the result
    with pytest.raises(PretrainedError, match="run_a"):
        finetune.run(first, workdir)


# ----------------------------------------------------------------------------------------------------
# 7. Bad input: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------
def test_bad_input_is_one_line_exit_2_and_writes_nothing(text_corpus, tmp_path, capsys):
    config = str(tiny_config_file(tmp_path / "tiny.py", text_corpus))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory\n")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root ignores permission bits; procfs refuses new files to everyone
        read_only = Path("/proc/self/fdinfo")
    workdir = tmp_path / "run"
    cases = [
        (["pretrain", "--config", str(tmp_path / "nope.py"), "--workdir", str(workdir)],
         f"config file {tmp_path / 'nope.py'} does not exist; give a .py config file"),
        (["pretrain", "--config", config, "--workdir", str(a_file)],
         f"--workdir {a_file} is a file, not a directory"),
        (["pretrain", "--config", config, "--workdir", str(read_only)], f"--workdir {read_only}"),
        (["pretrain", "--config", config, "--workdir", str(workdir), "--config.model.remat=ful"],
         "model.remat='ful' unknown; use one of 'none', 'full', 'dots'"),
        (["pretrain", "--config", config, "--workdir", str(workdir), "--config.train.log_every=0"],
         "train.log_every=0 is invalid; set --config.train.log_every to an integer > 0"),
        (["pretrain", "--config", config, "--workdir", str(workdir), "--config.train.steps=-5"],
         "train.steps=-5 is invalid; set --config.train.steps to an integer > 0"),
        (["pretrain", "--config", config, "--workdir", str(workdir), "--config.train.steps=3",
          "--config.train.stepz=4"],
         "unknown config field '--config.train.stepz' (did you mean '--config.train.steps'?); "
         "'tljax pretrain --help' lists the valid fields"),
        (["pretrain", "--config", config, "--workdir", str(workdir), "--config.train.steps=3",
          "--config.trian.lr=4"], "unknown config field '--config.trian.lr' (did you mean '--config.train.lr'?)"),
        (["experiment", "--config", str(REPO / "configs/experiments/learning_curve.py:qiuck"), "--workdir",
          str(workdir)], "unknown config argument 'qiuck'; use learning_curve.py or learning_curve.py:quick"),
        (["finetune", "--config", str(REPO / "configs/finetune_classify.py"), "--workdir", str(workdir),
          "--config.train.lr=0"], "train.lr=0.0 is invalid; set --config.train.lr to a number > 0"),
    ]
    for argv, message in cases:
        code, err, _ = run_cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and err[0].startswith("tljax: error: ") and message in err[0], (argv, err)
        assert not workdir.exists() and a_file.read_text() == "not a directory\n", argv


# ----------------------------------------------------------------------------------------------------
# 8. --help, --version
# ----------------------------------------------------------------------------------------------------
def test_every_command_has_help_listing_its_fields_and_there_is_a_version(capsys):
    from importlib import metadata
    for flag in ("--help", "-h"):
        code, _, out = run_cli(capsys, "pretrain", flag)
        assert code == 0 and out.startswith("usage: tljax pretrain --config FILE.py")
        lines = out.splitlines()
        # Values from tljax/defaults.py, docs from its end-of-line comments, valid values from the rules.
        assert any(l.split() == "train.run_steps = 0 stop this invocation after run_steps steps (0 = run to "
                                "train.steps); re-run resumes".split() for l in lines)
        assert any(l.split() == "model.remat = 'none' one of 'none', 'full', 'dots'".split() for l in lines)
        assert "--coordinator" in out and "--workdir DIR" in out
    code, _, out = run_cli(capsys, "finetune", "--help")
    assert code == 0 and any(l.split()[:3] == ["overwrite", "=", "False"] and "replace a finished result" in l
                             for l in out.splitlines())
    code, _, out = run_cli(capsys, "pretrain", "--help", "--config", str(REPO / "configs/gpt_clm_tiny.py"))
    assert code == 0 and any(l.split()[:3] == ["objective", "=", "'clm'"] for l in out.splitlines())
    code, _, out = run_cli(capsys, "word2vec", "-h", "--config", str(REPO / "configs/word2vec.py"))
    assert code == 0 and any(l.split() == ["dim", "=", "100", "vector", "size"] for l in out.splitlines())
    code, _, out = run_cli(capsys, "experiment", "-h", "--config", str(REPO / "configs/experiments/learning_curve.py"))
    assert code == 0 and "finetune.data.train = ''" in out
    for command in ("data", "convert"):
        code, _, out = run_cli(capsys, command, "--help")
        assert code == 0 and out.startswith(f"usage: tljax {command} ")
    code, _, out = run_cli(capsys, "--version")
    try:
        expected = metadata.version("tljax")
    except metadata.PackageNotFoundError:
        expected = "unknown"
    assert code == 0 and out.startswith(f"tljax {expected}")


def test_field_docs_from_comments():
    from tljax.config import field_docs
    source = textwrap.dedent('''
        def get_config():
            c = ConfigDict()
            c.alpha = 1  # the alpha
            # the beta, documented above
            c.beta = 2
            c.group = ConfigDict(dict(
                one=1, two=2,  # both one and two
                three=3,
                four=4))  # only four
            return c
        ''')
    assert field_docs(source) == {"alpha": "the alpha", "beta": "the beta, documented above",
                                  "group.one": "both one and two", "group.two": "both one and two",
                                  "group.four": "only four"}


# ----------------------------------------------------------------------------------------------------
# 9. The user's labeled files are used, never silently replaced by the built-in set
# ----------------------------------------------------------------------------------------------------
def test_finetune_uses_the_given_files_and_refuses_name_plus_files(tmp_path):
    from tljax.data import labeled
    from tljax.data.sources import SourceError
    write_keyword_task(tmp_path)
    base = ["finetune", "--config", str(REPO / "configs/finetune_classify.py"), "--workdir", str(tmp_path / "w"),
            f"--config.data.train=csv:{tmp_path}/train.csv", f"--config.data.test=csv:{tmp_path}/test.csv"]
    config, _ = cli.parse_config_flags(base[1:])
    data = labeled.load_labeled(config.data, seed=0)
    assert data.label_names == ["neg", "pos"]
    assert len(data.train) + len(data.validation) == 120 and len(data.test) == 40
    config, _ = cli.parse_config_flags(base[1:] + ["--config.data.name=rotten_tomatoes"])
    with pytest.raises(SourceError, match=r"^both data.name='rotten_tomatoes' and data.train and data.test are "
                                          r"set; clear one: --config.data.name= to use your files"):
        labeled.load_labeled(config.data, seed=0)
    config, _ = cli.parse_config_flags(base[1:6])
    with pytest.raises(SourceError, match="data.train is set but data.test is empty"):
        labeled.load_labeled(config.data, seed=0)
    assert labeled.labeled_specs({"name": ""}) == ("builtin:rotten_tomatoes/train", "builtin:rotten_tomatoes/test")


# ----------------------------------------------------------------------------------------------------
# 10. One text file as the corpus
# ----------------------------------------------------------------------------------------------------
def test_one_text_file_corpus_holds_out_pieces_and_pretrains(tmp_path, capsys):
    from pydoc_data.topics import topics  # Python's own documentation, ~400 KB of English text
    from tljax.data import sources
    # A paragraph per line, no blank line: one document of ~200 KB.
    text = "\n".join(" ".join(doc.split()) for doc in topics.values())[:200_000]
    novel = tmp_path / "novel.txt"
    novel.write_text(text, encoding="utf-8")
    config = tiny_config_file(tmp_path / "tiny.py", tmp_path, steps=2, log_every=1)
    workdir = tmp_path / "run"
    code, err, out = run_cli(capsys, "pretrain", "--config", str(config), "--workdir", str(workdir),
                             f"--config.data.source=text:{novel}", "--config.data.holdout=0.01")
    assert code == 0, err
    assert "data: 1 document(s) are too few to take fractions (subsample 1, holdout 0.01) by whole documents" in out
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["eval_loss"])

    # The held-out pieces: 1 % of them, evenly spread, disjoint from training; together the whole text.
    docs = list(sources.iter_documents(f"text:{novel}"))
    assert len(docs) == 1
    train = list(sources.select_documents(docs, holdout=0.01))
    held = list(sources.select_documents(docs, holdout=0.01, take_holdout=True))
    pieces = sources.chunk_text(text)
    assert len(held) == math.floor(len(pieces) * 0.01) > 0 and not set(train) & set(held)
    assert sorted(train + held) == sorted(pieces) and " ".join(pieces).split() == text.split()


# ----------------------------------------------------------------------------------------------------
# Strict JSON
# ----------------------------------------------------------------------------------------------------
def test_config_json_is_strict_json(tmp_path):
    from tljax.config import save_config
    from tljax.defaults import finetune_config
    c = finetune_config()
    c.train.lr = float("nan")
    save_config(c, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text(),
                       parse_constant=lambda name: pytest.fail(f"non-strict JSON literal {name}"))
    assert saved["train"]["lr"] is None and saved["init_from"] == ""
