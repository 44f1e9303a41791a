"""The ``tljax`` command: ``tljax pretrain|finetune|word2vec|experiment|data prepare`` … with ml-collections configs.

    tljax pretrain --config configs/bert_mlm_tiny.py --workdir runs/bert_tiny [--config.train.steps=300]
    tljax data prepare [--force]

Bad input (unknown config field, bad value, bad data path) ends with one line naming the problem and
the fix, and exit status 2; nothing in the workdir is overwritten.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

USAGE = """usage: tljax COMMAND [flags]

commands:
  pretrain --config FILE.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
                          masked-LM or causal-LM pretraining (resumes from DIR's checkpoints)
  finetune --config FILE.py --workdir DIR [--config.FIELD=VALUE ...]
                          text classification by transfer (features, light, full, progressive)
  word2vec --config FILE.py --workdir DIR [--config.FIELD=VALUE ...]
                          word2vec (skip-gram/CBOW, negative sampling) word vectors in JAX
  experiment --config FILE.py[:quick] --workdir DIR [--config.FIELD=VALUE ...]
                          transfer vs scratch across label budgets: results.csv/.md, learning_curve.png
                          (resumes: finished cells are kept)
  data prepare [--force]  fetch and prepare the embedded offline corpus and Rotten Tomatoes
  convert --from SRC --to DST
                          Hugging Face folder <-> tljax run: --from hf:/folder (or hf:minilm) --to runs/x
                          writes a run that init_from accepts; --from runs/x --to hf:/folder exports
                          (a fine-tuning run exports as Bert/GPT2ForSequenceClassification)
  predict --model RUN --input csv:F.csv|jsonl:F.jsonl|- [--output F.csv|F.jsonl] [--text_field text]
                          classify texts with a fine-tuning run's model/ (- reads lines from stdin;
                          no --output: CSV on stdout)
  evaluate --model RUN --data csv:F.csv|jsonl:F.jsonl [--text_field text] [--label_field label]
                          accuracy, macro-F1 and confusion matrix of a fine-tuning run's model/ on labeled data

multi-process pretrain / finetune (the same command in every process; docs/scaling.md):
  --coordinator=HOST:PORT --num_processes=N --process_id=I   (or TLJAX_COORDINATOR, TLJAX_NUM_PROCESSES,
                                                               TLJAX_PROCESS_ID)
  --distributed=auto      on a TPU pod or under SLURM: JAX discovers the processes itself
"""


def fail(message: str, code: int = 2):
    print(f"tljax: error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_config_flags(argv: list[str], extra_flags=()) -> tuple[object, dict]:
    """Parse ``--config`` (ml-collections file + overrides), ``--workdir`` and ``extra_flags``.

    Returns (config, {flag: value}); any parse problem becomes a one-line error.
    """
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    # sys_argv: the --config.* overrides are looked up in this argv, not in sys.argv (they differ when
    # main() is called from Python).
    config_flags.DEFINE_config_file("config", None, "ml-collections config file", flag_values=fv,
                                    lock_config=True, sys_argv=["tljax"] + list(argv))
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, summary)", flag_values=fv)
    for name, default, help_ in extra_flags:
        flags.DEFINE_string(name, default, help_, flag_values=fv)
    try:
        fv(["tljax"] + argv)
    except flags.Error as e:
        fail(f"{e}")
    except (AttributeError, KeyError) as e:
        bad = next((a for a in argv if a.startswith("--config.")), "")
        import re
        hint = re.search(r'Did you mean "(\w+)"', str(e))
        fail(f"unknown config field {bad.split('=')[0]!r}"
             + (f" (did you mean {hint.group(1)!r}?)" if hint else "") + "; see the config file for valid fields")
    except Exception as e:  # a config file that does not load
        fail(f"cannot load --config: {type(e).__name__}: {e}")
    if fv.config is None:
        fail("--config is required (e.g. --config configs/bert_mlm_tiny.py)")
    if not fv.workdir:
        fail("--workdir is required (the run's output directory)")
    values = {name: getattr(fv, name) for name, _, _ in extra_flags}
    values["workdir"] = fv.workdir
    return fv.config, values


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (config, data, checkpoint): reported in one line, exit status 2."""
    from tljax.config import ConfigError
    from tljax.data.fetch import FetchError
    from tljax.data.sources import SourceError
    from tljax.pretrained import PretrainedError
    from tljax.distributed import DistributedError
    return ConfigError, SourceError, FetchError, PretrainedError, DistributedError, FileNotFoundError


def run_config_command(argv, run, interrupted: str, multiprocess: bool = False):
    """Parse ``--config``/``--workdir`` and call ``run(config, workdir)``, turning user errors into one line.

    multiprocess: also accept the launch flags of ``tljax.distributed`` and join the runtime first."""
    from tljax import distributed
    extra = [(name, None, help_) for name, _, help_ in distributed.FLAGS] if multiprocess else []
    config, values = parse_config_flags(argv, extra)
    try:
        if multiprocess:  # before anything touches a device: joining needs a fresh backend
            distributed.initialize(distributed.resolve_launch(values))
        run(config, values["workdir"])
    except user_errors() as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"interrupted; {interrupted}", 130)


def cmd_pretrain(argv):
    from tljax import pretrain
    run_config_command(argv, pretrain.run, "the last checkpoint is kept, re-run the same command to resume",
                       multiprocess=True)


def cmd_finetune(argv):
    from tljax import finetune
    run_config_command(argv, finetune.run, "re-run the command (a fine-tuning run is short and starts over)",
                       multiprocess=True)


def cmd_word2vec(argv):
    from tljax import word2vec
    run_config_command(argv, word2vec.run, "nothing was saved, re-run the command")


def cmd_experiment(argv):
    from tljax import experiment
    run_config_command(argv, experiment.run, "finished cells are kept, re-run the same command to resume")


def cmd_data(argv):
    if not argv or argv[0] != "prepare" or any(a not in ("--force",) for a in argv[1:]):
        fail("usage: tljax data prepare [--force]")
    from tljax.data import corpus
    try:
        corpus.prepare_all(force="--force" in argv)
    except user_errors() as e:
        fail(str(e))


def cmd_convert(argv):
    values, rest = {}, list(argv)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name not in ("--from", "--to") or name[2:] in values:
            fail(f"unexpected argument {arg!r}; usage: tljax convert --from SRC --to DST")
        if not eq:
            if not rest:
                fail(f"{name} needs a value; usage: tljax convert --from SRC --to DST")
            value = rest.pop(0)
        values[name[2:]] = value
    if set(values) != {"from", "to"} or not all(values.values()):
        fail("usage: tljax convert --from SRC --to DST (SRC: hf:/folder, hf:minilm or a tljax run; "
             "DST: a new run folder, or hf:/folder to export)")
    from tljax import hf
    try:
        if values["to"].startswith("hf:") and hf.is_classifier_run(values["from"]):
            out = hf.export_classifier_hf(values["from"], values["to"][3:])
            print(f"wrote Hugging Face sequence classifier {out}")
        elif values["to"].startswith("hf:"):
            out = hf.export_hf(values["from"], values["to"][3:])
            print(f"wrote Hugging Face folder {out}")
        else:
            out = hf.write_run(values["from"], values["to"])
            print(f"wrote tljax run {out} (use it as init_from={out})")
    except user_errors() as e:
        fail(str(e))


def parse_flags(argv: list[str], names: dict[str, str | None], usage: str) -> dict[str, str | None]:
    """``--name value`` / ``--name=value`` flags of ``names`` (name -> default; None = required)."""
    values, rest = {}, list(argv)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or name[2:] not in names or name[2:] in values:
            fail(f"unexpected argument {arg!r}; usage: {usage}")
        if not eq:
            if not rest:
                fail(f"{name} needs a value; usage: {usage}")
            value = rest.pop(0)
        values[name[2:]] = value
    for name, default in names.items():
        if values.get(name) in (None, ""):
            if default is None:
                fail(f"--{name} is required; usage: {usage}")
            values[name] = default
    return values


PREDICT_USAGE = ("tljax predict --model RUN --input csv:F.csv|jsonl:F.jsonl|- [--output F.csv|F.jsonl] "
                 "[--text_field text]")


def _persistent_compilation_cache() -> None:
    """Keep predict's / evaluate's compiled length buckets on disk: a later invocation skips compiling."""
    import jax
    from tljax.utils import cache_dir
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _read_stdin_texts() -> list[str]:
    from tljax.data.sources import SourceError
    try:
        data = sys.stdin.buffer.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"stdin is not UTF-8 text (bad byte at offset {e.start}); convert it first, "
                          f"e.g. `iconv -f latin1 -t utf-8`") from None
    texts = [line for line in data.splitlines() if line.strip()]
    if not texts:
        raise SourceError("stdin holds no text; give one text per line (or --input csv:F.csv)")
    return texts


def cmd_predict(argv):
    flags = parse_flags(argv, {"model": None, "input": None, "output": "", "text_field": "text"}, PREDICT_USAGE)
    output = flags["output"]
    fmt = "jsonl" if output.endswith(".jsonl") else "csv"
    if output and not output.endswith((".csv", ".jsonl")):
        fail(f"--output {output!r} must end in .csv or .jsonl (or leave it out for CSV on stdout)")
    from pathlib import Path
    if output and not Path(output).expanduser().absolute().parent.is_dir():
        fail(f"--output {output!r}: folder {Path(output).parent} does not exist; create it first")
    from tljax import classifier
    from tljax.data import labeled
    _persistent_compilation_cache()
    try:
        clf = classifier.load_classifier(flags["model"])
        texts = (_read_stdin_texts() if flags["input"] == "-"
                 else labeled.read_texts(flags["input"], flags["text_field"]))
        predicted, proba = clf.predict_ids(texts, progress=len(texts) >= 1000 and sys.stderr.isatty())
        classifier.write_predictions(output, texts, clf.label_names, predicted, proba, fmt=fmt,
                                     stream=None if output else sys.stdout)
    except user_errors() as e:
        fail(str(e))
    if output:
        print(f"wrote {len(texts)} predictions to {output}", file=sys.stderr)


EVALUATE_USAGE = ("tljax evaluate --model RUN --data csv:F.csv|jsonl:F.jsonl|builtin:rotten_tomatoes/test "
                  "[--text_field text] [--label_field label] [--json metrics.json]")


def cmd_evaluate(argv):
    flags = parse_flags(argv, {"model": None, "data": None, "text_field": "text", "label_field": "label",
                               "json": ""}, EVALUATE_USAGE)
    from tljax import classifier
    from tljax.data import labeled
    from tljax.utils import write_json
    _persistent_compilation_cache()
    try:
        clf = classifier.load_classifier(flags["model"])
        texts, raw = labeled.read_labeled(flags["data"], flags["text_field"], flags["label_field"],
                                          settings=("--text_field", "--label_field"))
        labels = labeled._to_ids([labeled._canonical(x) for x in raw], clf.label_names, flags["data"],
                                 "evaluation")
        predicted, _ = clf.predict_ids(texts, progress=len(texts) >= 1000 and sys.stderr.isatty())
        result = classifier.evaluation(labels, predicted, clf.num_classes)
    except user_errors() as e:
        fail(str(e))
    print(classifier.format_evaluation(result, clf.label_names))
    if flags["json"]:
        write_json(flags["json"], dict(result, label_names=clf.label_names, data=flags["data"]))


COMMANDS = {"pretrain": cmd_pretrain, "finetune": cmd_finetune, "word2vec": cmd_word2vec,
            "experiment": cmd_experiment, "data": cmd_data,
            "convert": cmd_convert, "predict": cmd_predict, "evaluate": cmd_evaluate}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        fail(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    command(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
