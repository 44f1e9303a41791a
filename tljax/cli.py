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

USAGE = """usage: tljax COMMAND [flags]     (tljax COMMAND --help: its flags and config fields; tljax --version)

commands:
  pretrain --config FILE.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
                          masked-LM or causal-LM pretraining (resumes from DIR's checkpoints)
  finetune --config FILE.py --workdir DIR [--config.FIELD=VALUE ...]
                          text classification by transfer (features, light, full, progressive, lora)
  word2vec --config FILE.py --workdir DIR [--config.FIELD=VALUE ...]
                          word2vec (skip-gram/CBOW, negative sampling) word vectors in JAX
  experiment --config FILE.py[:quick] --workdir DIR [--config.FIELD=VALUE ...]
                          transfer vs scratch across label budgets: results.csv/.md, learning_curve.png
                          (resumes: finished cells are kept)
  zeroshot --model SRC --data SPEC --workdir DIR [--config.FIELD=VALUE ...]
                          classify with a causal LM's log-probabilities of label verbalizers (zero- or
                          few-shot): --config.prompt="Review: {text}\nSentiment:"
                          --config.verbalizer='{"pos": " positive", "neg": " negative"}' [--config.k_shot=4
                          --config.train=csv:train.csv]; writes summary.json and predictions.csv
  data prepare [--force]  fetch and prepare the offline corpus, Rotten Tomatoes and the Chinese reviews
  convert --from SRC --to DST
                          Hugging Face folder <-> tljax run: --from hf:/folder (or hf:minilm, hf:smollm2)
                          or gguf:/path/model.gguf --to runs/x
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


def config_file_arg(argv: list[str]) -> str | None:
    """The value of ``--config FILE[:ARG]`` / ``--config=FILE[:ARG]`` in ``argv``, or None."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _without_config_file(argv: list[str]) -> list[str]:
    """``argv`` without ``--config FILE[:ARG]`` / ``--config=FILE[:ARG]`` (overrides stay)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("--config="):
            out.append(arg)
    return out


def _last_line(text: str) -> str:
    """The last non-empty line of an error text (a config file's traceback ends with its message)."""
    lines = [l.strip() for l in str(text).strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""


def _failed_override(argv: list[str], error: Exception, command: str) -> str:
    """One line for an override naming no existing field: which ``--config.`` argument (the one whose path
    holds the unknown name ml-collections reports) and the closest field name."""
    import re
    text = str(error)
    missing = re.match(r"""^['"\\]*(\w+)""", text.strip("'\"\\"))
    key = missing.group(1) if missing else None
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    bad = next((a for a in overrides if key in a[len("--config."):].split(".")), overrides[0] if overrides else "")
    hint = re.search(r'Did you mean "(\w+)"', text)
    suggestion = ""
    parts = bad[len("--config."):].split(".")
    if hint and key in parts:
        parts[parts.index(key)] = hint.group(1)
        suggestion = f" (did you mean '--config.{'.'.join(parts)}'?)"
    return (f"unknown config field {bad!r}{suggestion}; 'tljax {command} --help' lists the valid fields")


def parse_config_flags(argv: list[str], extra_flags=(), command: str = "COMMAND") -> tuple[object, dict]:
    """Parse ``--config`` (ml-collections file + overrides), ``--workdir`` and ``extra_flags``.

    Returns (config, {flag: value}); any parse problem becomes a one-line error.
    """
    from absl import flags
    from ml_collections import config_flags

    from tljax import config as config_lib

    spec = config_file_arg(argv)
    if spec is None:
        fail("--config is required (e.g. --config configs/bert_mlm_tiny.py)")
    try:
        loaded = config_lib.load_config_file(spec)  # the one loader of config files
    except config_lib.ConfigError as e:
        fail(str(e))
    # The file is loaded; what absl parses is the overrides (--config FILE itself is taken out).
    argv = _without_config_file(argv)
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, summary)", flag_values=fv)
    for name, default, help_ in extra_flags:
        flags.DEFINE_string(name, default, help_, flag_values=fv)
    try:
        # sys_argv: the --config.* overrides are looked up in this argv, not in sys.argv (they differ when
        # main() is called from Python); they are applied here, so a bad one fails here.
        config_flags.DEFINE_config_dict("config", loaded, "ml-collections config file", flag_values=fv,
                                        lock_config=True, sys_argv=["tljax"] + list(argv))
        fv(["tljax"] + argv)
        config = fv.config
    except flags.Error as e:
        text = str(e)
        if "Traceback" in text:  # the config file raised: its own message is the traceback's last line
            fail(f"cannot load --config {spec}: {_last_line(text)}")
        fail(_last_line(text) if "\n" in text.strip() else text)
    except (AttributeError, KeyError) as e:
        fail(_failed_override(argv, e, command))
    except Exception as e:  # a config file that does not load
        fail(f"cannot load --config {spec}: {type(e).__name__}: {_last_line(str(e))}")
    if config is None:
        fail("--config is required (e.g. --config configs/bert_mlm_tiny.py)")
    if not fv.workdir:
        fail("--workdir is required (the run's output directory)")
    values = {name: getattr(fv, name) for name, _, _ in extra_flags}
    values["workdir"] = fv.workdir
    return config, values


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (config, data, checkpoint): reported in one line, exit status 2."""
    from tljax.checkpoint import CheckpointError
    from tljax.config import ConfigError
    from tljax.data.fetch import FetchError
    from tljax.data.sources import SourceError
    from tljax.distributed import DistributedError
    from tljax.policy import PolicyError
    from tljax.pretrained import PretrainedError
    return (ConfigError, SourceError, FetchError, PretrainedError, DistributedError, CheckpointError, PolicyError,
            FileNotFoundError)


def _default_config(command: str):
    """The config a command's fields are documented from when ``--help`` gets no ``--config``."""
    from tljax import defaults
    if command == "pretrain":
        return defaults.pretrain_config("mlm", "bert")
    if command == "finetune":
        return defaults.finetune_config()
    return None


def _load_for_help(spec: str):
    from tljax import config as config_lib
    return config_lib.load_config_file(spec), open(spec.partition(":")[0], encoding="utf-8").read()


def command_help(command: str, argv: list[str]) -> str:
    """``tljax COMMAND --help``: usage, flags, and every config field with its value and one-line doc (the
    comments of tljax/defaults.py and of the ``--config`` file, when one is given) and its valid values."""
    from tljax import config as config_lib
    from tljax import distributed
    usage, summary = COMMAND_USAGE[command]
    out = [f"usage: tljax {command} {usage}", "", summary, "", "flags:",
           "  --config FILE.py[:ARG]  ml-collections config file (configs/*.py); its fields are below",
           "  --workdir DIR           run directory (outputs; one run at a time holds it)",
           "  --config.FIELD=VALUE    override one field of the config",
           "  -h, --help              this help (with --config FILE: that file's values)"]
    if command in ("pretrain", "finetune"):
        out += [f"  --{name:<21} {help_}" for name, _, help_ in distributed.FLAGS]
    builders = config_lib.builder_docs()
    docs = dict(builders.get(f"{command}_config", {}))
    spec = config_file_arg(argv)
    config, source_note = _default_config(command), "tljax/defaults.py"
    example = {"word2vec": "configs/word2vec.py", "experiment": "configs/experiments/learning_curve.py"}.get(command)
    if spec is None and config is None and example and os.path.isfile(example):
        spec = example  # run from a checkout: document the shipped config
    if spec is not None:
        try:
            config, source = _load_for_help(spec)
        except Exception as e:  # --help still prints the rest
            out += ["", f"(cannot load --config {spec}: {_last_line(str(e)) or type(e).__name__})"]
            return "\n".join(out)
        docs.update(config_lib.field_docs(source, builders))
        source_note = spec
    if config is None:
        out += ["", "config fields: give --config FILE to list them (e.g. "
                    f"{'configs/word2vec.py' if command == 'word2vec' else 'configs/experiments/learning_curve.py'})"]
        return "\n".join(out)
    rules = {"pretrain": config_lib.PRETRAIN_RULES, "finetune": config_lib.FINETUNE_RULES,
             "word2vec": config_lib.WORD2VEC_RULES}.get(command, {})
    if command == "experiment":
        rules = {f"finetune.{k}": v for k, v in config_lib.FINETUNE_RULES.items()}
    out += ["", f"config fields (--config.FIELD=VALUE; values of {source_note}):"]
    shown_groups = set()
    for field, value in config_lib.flatten(config_lib.to_dict(config)):
        parts = field.split(".")
        for i in range(1, len(parts)):
            group = ".".join(parts[:i])
            if group in docs and group not in shown_groups:
                shown_groups.add(group)
                out.append(f"  # {group}: {docs[group]}")
        note = docs.get(field) or (rules[field].need if field in rules else "")
        line = f"  {field} = {value!r}"
        out.append(f"{line:<44} {note}".rstrip() if note else line)
    return "\n".join(out)


def _quiet_async_noise() -> None:
    """orbax reads arrays in asyncio tasks; when a restore fails, the tasks' own copies of the error are
    printed at exit as 'Task exception was never retrieved' tracebacks. The error itself is reported in
    one line, so these are silenced."""
    import logging
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def run_config_command(argv, run, interrupted: str, multiprocess: bool = False, command: str = "COMMAND"):
    """Parse ``--config``/``--workdir`` and call ``run(config, workdir)``, turning user errors into one line.

    multiprocess: also accept the launch flags of ``tljax.distributed`` and join the runtime first."""
    from tljax import distributed
    from tljax.engine import RunStopped
    if "-h" in argv or "--help" in argv:
        print(command_help(command, argv))
        sys.exit(0)
    extra = [(name, None, help_) for name, _, help_ in distributed.FLAGS] if multiprocess else []
    config, values = parse_config_flags(argv, extra, command)
    _quiet_async_noise()
    try:
        if multiprocess:  # before anything touches a device: joining needs a fresh backend
            distributed.initialize(distributed.resolve_launch(values))
        run(config, values["workdir"])
    except user_errors() as e:
        fail(str(e))
    except RunStopped as e:  # diverged, or stopped by SIGTERM / SIGINT after saving a checkpoint
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        fail(f"interrupted; {interrupted}", 130)


def overridden_fields(argv: list[str]) -> tuple[str, ...]:
    """The dotted config fields ``argv`` sets with ``--config.FIELD=VALUE`` / ``--config.FIELD VALUE``."""
    return tuple(a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config."))


def cmd_pretrain(argv):
    from tljax import pretrain
    given = overridden_fields(argv)  # with init_from, an explicit model field is checked against the source
    run_config_command(argv, lambda config, workdir: pretrain.run(config, workdir, given=given),
                       "the last checkpoint is kept, re-run the same command to resume",
                       multiprocess=True, command="pretrain")


def cmd_finetune(argv):
    from tljax import finetune
    run_config_command(argv, finetune.run, "the last checkpoint is kept, re-run the same command to resume",
                       multiprocess=True, command="finetune")


def cmd_word2vec(argv):
    from tljax import word2vec
    run_config_command(argv, word2vec.run, "nothing was saved, re-run the command", command="word2vec")


def run_experiment(config, workdir):
    """The experiment the config names in ``experiment`` (learning_curve when it names none)."""
    from tljax import defaults
    from tljax.config import ConfigError
    name = config.get("experiment", defaults.EXPERIMENT)
    if name == "failure_modes":
        from tljax import failures
        return failures.run(config, workdir)
    if name == "learning_curve":
        from tljax import experiment
        return experiment.run(config, workdir)
    raise ConfigError(f"experiment={name!r} unknown; choose one of {', '.join(defaults.EXPERIMENTS)}")


def cmd_experiment(argv):
    run_config_command(argv, run_experiment, "finished cells are kept, re-run the same command to resume",
                       command="experiment")


def _simple_help(command: str, argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        usage, summary = COMMAND_USAGE[command]
        print(f"usage: tljax {command} {usage}\n\n{summary}")
        sys.exit(0)


def cmd_zeroshot(argv):
    from absl import flags
    from ml_collections import config_flags
    from tljax import defaults, zeroshot
    fv = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", defaults.zeroshot_config(), "zeroshot settings", flag_values=fv,
                                    lock_config=True, sys_argv=["tljax"] + list(argv))
    for name, help_ in (("model", "causal LM: a tljax run, hf:FOLDER, hf:smollm2 or gguf:FILE"),
                        ("data", "labeled texts to classify: csv:PATH, jsonl:PATH, tfds:… or builtin:…"),
                        ("workdir", "output folder (summary.json, predictions.csv)")):
        flags.DEFINE_string(name, None, help_, flag_values=fv)
    try:
        fv(["tljax"] + list(argv))
    except flags.Error as e:
        fail(f"{e}")
    except (AttributeError, KeyError):
        bad = next((a for a in argv if a.startswith("--config.")), "")
        fail(f"unknown config field {bad.split('=')[0]!r}; fields: {', '.join(defaults.zeroshot_config())}")
    missing = [name for name in ("model", "data", "workdir") if not getattr(fv, name)]
    if missing:
        fail(f"--{missing[0]} is required; usage: tljax zeroshot --model SRC --data SPEC --workdir DIR "
             f"--config.prompt=... --config.verbalizer=...")
    try:
        zeroshot.run(fv.config, fv.model, fv.data, fv.workdir)
    except user_errors() as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; nothing was written, re-run the command", 130)


def cmd_data(argv):
    _simple_help("data", argv)
    if not argv or argv[0] != "prepare" or any(a not in ("--force",) for a in argv[1:]):
        fail("usage: tljax data prepare [--force]")
    from tljax.data import corpus
    try:
        corpus.prepare_all(force="--force" in argv)
    except user_errors() as e:
        fail(str(e))


def cmd_convert(argv):
    _simple_help("convert", argv)
    values = parse_flags(argv, {"from": None, "to": None},
                         "tljax convert --from SRC --to DST (SRC: hf:/folder, hf:minilm, hf:smollm2, gguf:/file.gguf "
                         "or a tljax run; DST: a new run folder, or hf:/folder to export)")
    from tljax import hf
    from tljax.init_from import resolve
    try:
        if values["to"].startswith("hf:") and hf.is_classifier_run(values["from"]):
            out = hf.export_classifier_hf(values["from"], values["to"][3:])
            print(f"wrote Hugging Face sequence classifier {out}")
        elif values["to"].startswith("hf:"):
            out = hf.export_hf(resolve(values["from"]), values["to"][3:])
            print(f"wrote Hugging Face folder {out}")
        else:
            out = hf.write_run(resolve(values["from"]), values["to"])
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




COMMAND_USAGE = {
    "pretrain": ("--config FILE.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]",
                 "Masked-LM (BERT) or causal-LM (GPT) pretraining; re-running the command resumes from DIR's\n"
                 "newest checkpoint that restores."),
    "finetune": ("--config FILE.py --workdir DIR [--config.FIELD=VALUE ...]",
                 "Text classification by transfer (features, light, full, progressive, lora) from init_from."),
    "word2vec": ("--config FILE.py --workdir DIR [--config.FIELD=VALUE ...]",
                 "word2vec (skip-gram/CBOW, negative sampling) word vectors in JAX."),
    "experiment": ("--config FILE.py[:quick] --workdir DIR [--config.FIELD=VALUE ...]",
                   "A resumable grid of fine-tuning cells (finished cells are kept): the learning curve (transfer\n"
                   "vs scratch across label budgets) or, with configs/experiments/failure_modes.py, the failure modes."),
    "data": ("prepare [--force]", "Fetch and prepare the offline corpus, Rotten Tomatoes and the Chinese reviews."),
    "convert": ("--from SRC --to DST", "Hugging Face folder <-> tljax run: --from hf:/folder (or hf:minilm) "
                                       "--to runs/x writes a run\nthat init_from accepts; --from runs/x --to "
                                       "hf:/folder exports."),
}

COMMANDS = {"pretrain": cmd_pretrain, "finetune": cmd_finetune, "word2vec": cmd_word2vec,
            "experiment": cmd_experiment, "data": cmd_data, "zeroshot": cmd_zeroshot,
            "convert": cmd_convert, "predict": cmd_predict, "evaluate": cmd_evaluate}


def version() -> str:
    """The installed package's version (importlib.metadata), or "unknown" when run from a source tree."""
    from importlib import metadata
    try:
        return metadata.version("tljax")
    except metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(f"tljax {version()}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        fail(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    command(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
