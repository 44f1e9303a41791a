"""A fine-tuned classifier as a folder: saved by every ``tljax finetune`` run into ``workdir/model/``, loaded by
``tljax.load_classifier``, served by ``tljax predict`` / ``tljax evaluate``, exported by ``tljax convert``.

``model/`` holds only plain formats (no pickle), so loading needs nothing but that folder:

    classifier.json      format, kind, label names (id order), pooling, max_len, batch size, the architecture
                         (TransformerConfig fields), the probe's kind and classes, where the run started from;
                         ``prompt`` (recipe=prompt_probe, format version 2): the probe's features are a causal
                         LM's label scores by prompting ({"prompt", "labels", "continuations", "normalize",
                         "max_len", "batch_size", "hidden"}: tljax.tasks.prompt), followed by the pooled
                         features when "hidden"; absent or null: the pooled features alone
    params.safetensors   kind "finetuned": the SequenceClassifier params at the best validation step
                         (backbone, pooler if used, ``classifier`` head); kind "probe": the frozen encoder's
                         params (no head; with ``prompt``: the LanguageModel params, LM head included); flat
                         "/"-joined Flax paths, float32
    probe.safetensors    kinds "probe" / "word_vectors": the fitted probe as arrays: StandardScaler
                         ``mean`` / ``scale``, then LogisticRegression ``coef`` [K', H] / ``intercept`` [K'],
                         or MLPClassifier ``coefs_i`` / ``intercepts_i`` per layer; ``classes`` [K] label ids
    tokenizer/           the Hugging Face tokenizer (kinds "finetuned" / "probe")
    word_vectors/        kind "word_vectors": vectors.npz + vocab.txt (``tljax.word2vec`` format)

Kinds: ``finetuned`` (gradient strategies light/full/progressive: logits of the SequenceClassifier),
``probe`` (``features``: pooled features of the frozen encoder -> the probe), ``word_vectors`` (``features``
from a word2vec run / word2vec file / spaCy vectors: mean word vector -> the probe).
Shapes: N texts, C classes (``len(label_names)``), H feature width.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from tljax.pretrained import PretrainedError
from tljax.tasks import classify
from tljax.utils import atomic_write_text, write_json

FORMAT = "tljax-classifier"
VERSION = 2  # 2: a probe on prompt scores (``prompt``); a model without one is still written as version 1
KINDS = ("finetuned", "probe", "word_vectors")
MODEL_DIR = "model"
CHUNK = 8192  # texts tokenized and sorted by length at a time: bounded memory, progress per chunk


class ClassifierError(PretrainedError):
    """A folder that is not a usable tljax classifier; the message names the fix."""


# ----------------------------------------------------------------------------------------------------
# The probe as arrays (StandardScaler + LogisticRegression / MLPClassifier, computed like scikit-learn)
# ----------------------------------------------------------------------------------------------------
def probe_arrays(pipeline) -> tuple[dict[str, np.ndarray], dict]:
    """A fitted ``make_pipeline(StandardScaler(), LogisticRegression | MLPClassifier)`` -> (arrays, info).

    arrays: ``mean`` [H], ``scale`` [H], ``classes`` [K] (label ids the probe saw), and ``coef`` [K', H],
    ``intercept`` [K'] (K' = 1 for two classes) or ``coefs_i`` [in, out], ``intercepts_i`` [out] per MLP layer.
    info: {"kind": "logreg" | "mlp", "activation": hidden activation of the MLP}. Every array keeps the dtype
    scikit-learn fitted it in (float32 for float32 features), so predictions are computed in the same precision."""
    from sklearn.linear_model import LogisticRegression
    scaler, clf = pipeline.steps[0][1], pipeline.steps[-1][1]
    keep = lambda a: np.ascontiguousarray(np.asarray(a))
    arrays = {"mean": keep(scaler.mean_ if scaler.with_mean else np.zeros(scaler.n_features_in_)),
              "scale": keep(scaler.scale_ if scaler.with_std else np.ones(scaler.n_features_in_)),
              "classes": np.ascontiguousarray(np.asarray(clf.classes_, np.int64))}
    if isinstance(clf, LogisticRegression):
        arrays.update(coef=keep(clf.coef_), intercept=keep(clf.intercept_))
        return arrays, {"kind": "logreg"}
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        arrays[f"coefs_{i}"], arrays[f"intercepts_{i}"] = keep(w), keep(b)
    return arrays, {"kind": "mlp", "activation": clf.activation, "layers": len(clf.coefs_)}


def _expit(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # what scikit-learn uses (scipy is its dependency)
    return expit(x)


_MLP_ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "identity": lambda x: x,
                    "logistic": _expit}


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def probe_proba(arrays: dict[str, np.ndarray], info: dict, features: np.ndarray, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """features [N, H] -> (predicted label ids [N], probabilities [N, C] float64), as the scikit-learn
    pipeline's ``predict`` / ``predict_proba`` compute them, in the same float precision (classes it never
    saw get probability 0)."""
    x = np.array(features, dtype=features.dtype if features.dtype in (np.float32, np.float64) else np.float64)
    x -= arrays["mean"].astype(x.dtype)  # StandardScaler keeps the input's float dtype
    x /= arrays["scale"].astype(x.dtype)
    if info["kind"] == "logreg":
        scores = x @ arrays["coef"].T + arrays["intercept"]
        if scores.shape[1] == 1:  # binary: sigmoid of one score; predicted class 1 iff score > 0
            p1 = _expit(scores[:, 0])
            proba, top = np.stack([1.0 - p1, p1], 1), (scores[:, 0] > 0).astype(np.int64)
        else:
            proba = _softmax(scores)
            top = scores.argmax(1)
    else:
        act = _MLP_ACTIVATIONS[info["activation"]]
        h = x
        for i in range(info["layers"]):
            h = h @ arrays[f"coefs_{i}"] + arrays[f"intercepts_{i}"]
            if i < info["layers"] - 1:
                h = act(h)
        if h.shape[1] == 1:  # logistic output unit; LabelBinarizer thresholds at 0.5
            p1 = _expit(h[:, 0])
            proba, top = np.stack([1.0 - p1, p1], 1), (p1 > 0.5).astype(np.int64)
        else:
            proba = _softmax(h)
            top = proba.argmax(1)
    classes = arrays["classes"]
    full = np.zeros((len(x), num_classes), np.float64)
    full[:, classes] = proba
    return classes[top], full


# ----------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------
def _save_arrays(tree_or_flat: dict, path: Path) -> None:
    from flax import traverse_util
    from safetensors.numpy import save_file
    flat = tree_or_flat
    if any(isinstance(v, dict) for v in tree_or_flat.values()):
        flat = traverse_util.flatten_dict(tree_or_flat, sep="/")
    save_file({k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}, str(path))


def save_model(workdir: str | Path, *, kind: str, label_names: list[str], max_len: int = 0, pooling: str = "",
               batch_size: int = 64, model_config=None, params: dict | None = None, tokenizer=None,
               probe=None, word_vectors=None, source: dict | None = None, prompt: dict | None = None) -> Path:
    """Write ``workdir/model/`` (replacing an earlier one only once the new one is complete). Returns it.

    kind "finetuned": ``params`` = SequenceClassifier params (with ``classifier``), ``model_config`` (a
    TransformerConfig), ``tokenizer``, ``pooling``, ``max_len``. kind "probe": ``params`` = the encoder's
    params (no head) + ``probe`` (the fitted scikit-learn pipeline). kind "word_vectors": ``word_vectors``
    (a ``tljax.word2vec.WordVectors``) + ``probe``. ``batch_size``: the batch the run evaluated its test set
    with (prediction reuses it, so it computes exactly the run's numbers). ``source``: JSON facts about the
    run (init_from, strategy, …), kept for the record. ``prompt`` (kind "probe" of recipe=prompt_probe): the
    prompt settings whose label scores are the probe's features (module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; use one of {KINDS}")
    workdir = Path(workdir)
    final = workdir / MODEL_DIR
    tmp = workdir / f".{MODEL_DIR}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Only a prompt-score probe needs a reader that knows ``prompt``: an older one would feed it pooled features.
    meta = {"format": FORMAT, "version": VERSION if prompt else 1, "kind": kind, "label_names": [str(n) for n in label_names],
            "max_len": int(max_len), "pooling": pooling, "batch_size": int(batch_size),
            "model": dataclasses.asdict(model_config) if model_config is not None else None,
            "probe": None, "source": source or {}, **({"prompt": prompt} if prompt else {})}
    if kind in ("finetuned", "probe"):
        _save_arrays(params, tmp / "params.safetensors")
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    if kind in ("probe", "word_vectors"):
        arrays, info = probe_arrays(probe)
        _save_arrays(arrays, tmp / "probe.safetensors")
        meta["probe"] = info
    if kind == "word_vectors":
        from tljax.word2vec import WordVectors
        # Only words the tokenizer can produce (no whitespace) can be looked up; vocab.txt is one per line.
        index = {w: r for w, r in word_vectors.index.items() if w and not any(ch.isspace() for ch in w)}
        WordVectors(word_vectors.vectors, index).save(tmp / "word_vectors")
    write_json(tmp / "classifier.json", meta)
    if final.exists():  # a re-run of the same workdir: swap in the new model, then drop the old one
        old = workdir / f".{MODEL_DIR}.old{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    return final


def write_predictions(path: str | Path, texts: list[str], label_names: list[str], predicted: np.ndarray,
                      proba: np.ndarray, labels: np.ndarray | None = None, fmt: str = "csv", stream=None) -> None:
    """One row per text: text, [label,] predicted, then ``prob_<label name>`` per class.

    predicted / labels: label ids [N]; proba [N, C]. fmt "csv" or "jsonl" (JSONL rows carry the
    probabilities as {"label name": p}). Written atomically to ``path``, or to ``stream`` when given."""
    import csv
    import io
    buf = io.StringIO()
    if fmt == "csv":
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["text"] + (["label"] if labels is not None else []) + ["predicted"]
                   + [f"prob_{n}" for n in label_names])
        for i, text in enumerate(texts):
            w.writerow([text] + ([label_names[labels[i]]] if labels is not None else [])
                       + [label_names[predicted[i]]] + [f"{p:.8g}" for p in proba[i]])
    elif fmt == "jsonl":
        for i, text in enumerate(texts):
            row = {"text": text}
            if labels is not None:
                row["label"] = label_names[labels[i]]
            row["predicted"] = label_names[predicted[i]]
            row["probabilities"] = {n: float(f"{p:.8g}") for n, p in zip(label_names, proba[i])}
            buf.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ValueError(f"format {fmt!r}: use csv or jsonl")
    if stream is not None:
        stream.write(buf.getvalue())
        stream.flush()
    else:
        atomic_write_text(path, buf.getvalue())


def save_run_outputs(workdir: Path, config, data, pre, pooling: str, deploy: dict) -> None:
    """What ``tljax finetune`` leaves besides summary.json: ``predictions.csv`` (the test set, from the run's
    own test predictions) and, when ``config.save_model``, ``model/``.

    deploy (from finetune's strategies): {"kind", "test_ids" [N] the run's predicted label ids, "test_logits"
    [N, C] (kind "finetuned") or "test_features" [N, H] (probes), and per kind "params" / "probe" /
    "word_vectors", "batch_size"}."""
    names = data.label_names
    if deploy["kind"] == "finetuned":
        proba = _softmax(np.asarray(deploy["test_logits"], np.float64))
    else:
        arrays, info = probe_arrays(deploy["probe"])
        proba = probe_proba(arrays, info, deploy["test_features"], len(names))[1]
    write_predictions(workdir / "predictions.csv", data.test.texts, names, np.asarray(deploy["test_ids"]),
                      proba, labels=data.test.labels)
    if not config.get("save_model", True):
        return
    source = {"init_from": config.init_from, "strategy": config.strategy, "seed": config.seed,
              "head_dropout": config.head_dropout}
    if deploy["kind"] == "word_vectors":
        save_model(workdir, kind="word_vectors", label_names=names, probe=deploy["probe"],
                   word_vectors=deploy["word_vectors"], source=source)
        return
    save_model(workdir, kind=deploy["kind"], label_names=names, max_len=config.data.max_len, pooling=pooling,
               batch_size=deploy["batch_size"], model_config=pre.model, params=deploy["params"],
               tokenizer=pre.tokenizer, probe=deploy.get("probe"), source=source, prompt=deploy.get("prompt"))


# ----------------------------------------------------------------------------------------------------
# Loading and predicting
# ----------------------------------------------------------------------------------------------------
def model_dir(path: str | Path) -> Path:
    """A run workdir or its ``model/`` folder -> the ``model/`` folder. Raises ClassifierError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ClassifierError(f"{path} does not exist; give the workdir of a 'tljax finetune' run (or its model/ folder)")
    for candidate in (path / MODEL_DIR, path):
        if (candidate / "classifier.json").is_file():
            return candidate
    hint = ("its config sets save_model=False, or it was made before runs saved their model: re-run it"
            if (path / "summary.json").exists() else "give the workdir of a 'tljax finetune' run")
    raise ClassifierError(f"{path} is not a tljax classifier (no {MODEL_DIR}/classifier.json); {hint}")


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ClassifierError(f"cannot read {path} ({type(e).__name__}: {e}); the model folder is damaged, "
                              f"re-run the fine-tuning") from None


class Classifier:
    """A loaded classifier. ``label_names`` [C] (id order), ``kind``, ``max_len``, ``pooling``,
    ``batch_size``, ``config`` (TransformerConfig or None), ``tokenizer`` (or None), ``params`` (host arrays).

    ``predict(texts) -> list[str]``; ``predict_proba(texts) -> [N, C]``; ``predict_ids(texts)`` gives both the
    label ids [N] and the probabilities [N, C] in one pass."""

    def __init__(self, folder: Path, meta: dict):
        from tljax.models import TransformerConfig
        self.folder, self.meta = folder, meta
        self.kind, self.label_names = meta["kind"], list(meta["label_names"])
        self.max_len, self.pooling, self.batch_size = meta["max_len"], meta["pooling"], meta["batch_size"]
        try:
            self.config = TransformerConfig(**meta["model"]) if meta.get("model") else None
        except (TypeError, ValueError) as e:  # a field this tljax does not know, or a bad value
            raise ClassifierError(f"{folder / 'classifier.json'} describes a model this tljax cannot build "
                                  f"({e}); use the tljax version that saved it") from None
        self.tokenizer = self.params = self.probe = self.word_vectors = None
        if self.kind in ("finetuned", "probe"):
            from flax import traverse_util
            from tljax.data.tokenizer import load_tokenizer
            self.params = traverse_util.unflatten_dict(_load_arrays(folder / "params.safetensors"), sep="/")
            self.tokenizer = load_tokenizer(folder / "tokenizer")
        if self.kind in ("probe", "word_vectors"):
            self.probe = _load_arrays(folder / "probe.safetensors")
        if self.kind == "word_vectors":
            from tljax import word2vec
            self.word_vectors = word2vec.load(folder / "word_vectors")
        self.prompt = meta.get("prompt")  # prompt-score features (recipe=prompt_probe), or None
        self._fn = self._device_params = self._scorer = None

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __repr__(self) -> str:
        arch = f"{self.config.kind}, {self.config.num_layers} layers, " if self.config else ""
        return (f"Classifier({self.kind}, {arch}pooling {self.pooling or '-'}, labels {self.label_names}, "
                f"from {self.folder})")

    def _compiled(self):
        """(jitted fn(params, ids [b, t], mask [b, t]) -> logits [b, C] or features [b, H], params on device)."""
        if self._fn is None:
            import jax
            from tljax.models import SequenceClassifier
            module = SequenceClassifier(self.config, self.num_classes, pooling=self.pooling)
            # The run's own inference compilation (tasks.classify.jit_inference): the same numbers.
            if self.kind == "finetuned":
                self._fn = classify.jit_inference(
                    lambda p, i, m: module.apply({"params": p}, i, m, deterministic=True))
            else:
                self._fn = classify.jit_inference(
                    lambda p, i, m: module.apply({"params": p}, i, m, method=SequenceClassifier.features))
            self._device_params = jax.device_put(self.params)
        return self._fn, self._device_params

    def _chunk(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts [n] -> (label ids [n], probabilities [n, C])."""
        if self.kind == "word_vectors":
            from tljax.word2vec import text_features
            return probe_proba(self.probe, self.meta["probe"], text_features(self.word_vectors, texts),
                               self.num_classes)
        if self.prompt:
            return probe_proba(self.probe, self.meta["probe"], self._prompt_features(texts), self.num_classes)
        ids, mask = classify.encode_texts(self.tokenizer, texts, self.max_len)
        fn, params = self._compiled()
        out = classify.batched_apply(fn, params, ids, mask, self.batch_size)
        if self.kind == "probe":
            return probe_proba(self.probe, self.meta["probe"], out, self.num_classes)
        logits = out.astype(np.float64)
        return out.argmax(-1), _softmax(logits)

    def _prompt_features(self, texts: list[str]) -> np.ndarray:
        """texts [n] -> the features the run's prompt probe was fit on [n, C (+ H)]: the label scores of the
        saved prompt (tasks.prompt, the run's batch size), then the pooled features when ``hidden``."""
        from tljax.tasks import prompt as prompt_lib
        settings, tokenizer = self.prompt, self.tokenizer
        if self._scorer is None:
            verbalizer = prompt_lib.make_verbalizer(settings["labels"], settings["continuations"], tokenizer)
            self._scorer = (prompt_lib.Scorer(self.config, self.params, tokenizer, int(settings["batch_size"])),
                            verbalizer)
        scorer, verbalizer = self._scorer
        # The saved prompt has its escapes read already: it is used as stored.
        scores = prompt_lib.label_scores(scorer, tokenizer, _Settings(settings), texts, verbalizer, "")
        hidden = None
        if settings["hidden"]:
            ids, mask = classify.encode_texts(tokenizer, texts, self.max_len)
            fn, params = self._compiled()
            hidden = classify.batched_apply(fn, params, ids, mask, self.batch_size)
        return prompt_lib.feature_matrix(scores, hidden)

    def predict_ids(self, texts, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """texts (N strings) -> (predicted label ids int64 [N], probabilities float64 [N, C]).

        Texts are tokenized (truncated to ``max_len``) and run in batches sorted by length, CHUNK texts at a
        time; ``progress``: a tqdm bar over texts."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("give a list of texts (a single string would be classified character by character)")
        texts = [str(t) for t in texts]
        top = np.zeros((len(texts),), np.int64)
        proba = np.zeros((len(texts), self.num_classes), np.float64)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(texts), desc="predict", unit="text", dynamic_ncols=True)
        for lo in range(0, len(texts), CHUNK):
            t, p = self._chunk(texts[lo: lo + CHUNK])
            top[lo: lo + len(t)], proba[lo: lo + len(t)] = t, p
            if bar is not None:
                bar.update(len(t))
        if bar is not None:
            bar.close()
        return top, proba

    def predict_proba(self, texts) -> np.ndarray:
        """texts (N strings) -> class probabilities float64 [N, C] (columns in ``label_names`` order)."""
        return self.predict_ids(texts)[1]

    def predict(self, texts) -> list[str]:
        """texts (N strings) -> N predicted label names."""
        return [self.label_names[i] for i in self.predict_ids(texts)[0]]


class _Settings:
    """A saved ``prompt`` dict read as the attributes ``tasks.prompt.label_scores`` uses."""

    def __init__(self, fields: dict):
        self.prompt, self.normalize, self.max_len = fields["prompt"], fields["normalize"], int(fields["max_len"])


def load_classifier(path: str | Path) -> Classifier:
    """The classifier a ``tljax finetune`` run saved: ``path`` is its workdir or the ``model/`` folder."""
    folder = model_dir(path)
    try:
        meta = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClassifierError(f"cannot read {folder / 'classifier.json'} ({e}); re-run the fine-tuning") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ClassifierError(f"{folder / 'classifier.json'} is not a tljax classifier description")
    if meta.get("version", 0) > VERSION:
        raise ClassifierError(f"{folder} was saved by a newer tljax (format version {meta['version']}); "
                              f"upgrade tljax")
    if meta.get("kind") not in KINDS:
        raise ClassifierError(f"{folder}: unknown classifier kind {meta.get('kind')!r}")
    needed = {"finetuned": ("params.safetensors", "tokenizer"), "probe": ("params.safetensors", "tokenizer",
              "probe.safetensors"), "word_vectors": ("probe.safetensors", "word_vectors")}[meta["kind"]]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise ClassifierError(f"{folder} lacks {', '.join(missing)}; the model folder is incomplete, "
                              f"re-run the fine-tuning")
    return Classifier(folder, meta)


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------
def evaluation(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict:
    """labels / predicted: label ids [N] -> {"accuracy", "macro_f1", "confusion" [C, C] (rows: true label,
    columns: predicted), "num_examples"}; computed as ``tljax finetune`` computes its test numbers."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {"accuracy": float((predicted == labels).mean()), "macro_f1": classify.macro_f1(labels, predicted, num_classes),
            "confusion": confusion, "num_examples": int(len(labels))}


def format_evaluation(result: dict, label_names: list[str]) -> str:
    """The evaluation as text: accuracy, macro-F1 and the confusion matrix (true label per row)."""
    width = max(8, *(len(n) for n in label_names)) + 2
    lines = [f"examples   {result['num_examples']}", f"accuracy   {result['accuracy']:.4f}",
             f"macro-F1   {result['macro_f1']:.4f}", "", "confusion (rows: true label, columns: predicted)",
             " " * width + "".join(f"{n:>{width}}" for n in label_names)]
    for name, row in zip(label_names, result["confusion"]):
        lines.append(f"{name:<{width}}" + "".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines)
