"""Continued (domain- / task-adaptive) pretraining: from a tljax run, a converted run and Hugging Face BERT
folders (with and without an MLM head); tokenizer and architecture kept, head reused or fresh, learning on
in-domain text, resume from the workdir, the csv: and Rotten Tomatoes text sources, refusals."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch  # a test dependency: the reference BERT folders are made by transformers' PyTorch models
import transformers
from flax import traverse_util

from tljax import config as config_lib
from tljax.defaults import pretrain_config
from tljax import continued, hf, pretrain
from tljax.checkpoint import read_params
from tljax.config import ConfigError
from tljax.data import lm as lm_data
from tljax.data import prepared, sources
from tljax.data import tokenizer as tok_lib
from tljax.data.sources import SourceError
from tljax.models import LanguageModel, model_config
from tljax.models.layers import ACTIVATIONS
from conftest import tiny_pretrain_config as tiny
from conftest import tiny_pretrain_run, write_keyword_task

REPO = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


@pytest.fixture(scope="module")
def source_run(text_corpus, tmp_path_factory):
    """A tiny tljax MLM run (6 steps) to continue from."""
    return tiny_pretrain_run(tmp_path_factory, text_corpus, steps=6)


def corpus_words(corpus) -> list[str]:
    text = " ".join(p.read_text() for p in sorted(Path(corpus).glob("*.txt"))).lower()
    return sorted(set(re.findall(r"[a-z]+", text)))


def make_hf_bert(folder: Path, corpus, with_head: bool) -> Path:
    """A random tiny BERT saved by transformers: BertForMaskedLM (MLM head) or BertModel (none), with a
    WordPiece vocabulary of the corpus's words (so the corpus tokenizes without [UNK])."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + corpus_words(corpus)
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = (transformers.BertForMaskedLM if with_head else transformers.BertModel)(cfg)
    model.save_pretrained(folder)
    transformers.BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def adapt(corpus, init_from, **train):
    """The tiny test config continuing ``init_from`` with every model and tokenizer field left at its default,
    as configs/adapt_mlm.py does: the architecture and tokenizer are the source's."""
    c = tiny("mlm", "bert", corpus, **train)
    defaults = pretrain_config("mlm", "bert")
    c.model, c.data.tokenizer = defaults.model, defaults.data.tokenizer
    c.init_from = str(init_from)
    return c


def flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def read_metrics(workdir):
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


# --- from a tljax run -------------------------------------------------------------------------------------


def test_continuing_a_tljax_run_keeps_its_tokenizer_and_starts_from_its_weights(source_run, text_corpus, tmp_path):
    config = tiny("mlm", "bert", text_corpus, steps=4)  # the source's own config, tokenizer settings included
    config.init_from = str(source_run)
    start = continued.load(config, tmp_path)
    source_params, _ = read_params(source_run / "checkpoints")
    got, want = flat(start.params), flat(source_params)
    assert got.keys() == want.keys() and any(k.startswith("mlm_head/") for k in got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert start.head == "reused"

    summary = pretrain.run(config, tmp_path)
    # The run starts from the source exactly: its step-0 eval (same held-out text, same masking) is the
    # source's final eval loss.
    source_summary = json.loads((source_run / "summary.json").read_text())
    np.testing.assert_allclose(summary["init_eval_loss"], source_summary["eval_loss"], rtol=1e-5)
    assert summary["lm_head"] == "reused" and summary["init_from"] == str(source_run)
    # Tokenizer: the same vocabulary and ids, no new training.
    mine, theirs = (tok_lib.load_tokenizer(w / "tokenizer") for w in (tmp_path, source_run))
    assert mine.get_vocab() == theirs.get_vocab()
    text = (text_corpus / "part0.txt").read_text()[:500]
    assert mine(text)["input_ids"] == theirs(text)["input_ids"]
    saved = json.loads((tmp_path / "config.json").read_text())
    source_model = json.loads((source_run / "config.json").read_text())["model"]
    assert saved["init_from"] == str(source_run)
    assert {k: saved["model"][k] for k in source_model} == source_model  # the resolved architecture, recorded


def test_a_continued_run_resumes_from_its_own_checkpoints(source_run, text_corpus, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(source_run, source)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain.run(adapt(text_corpus, source, steps=12), straight)
    pretrain.run(adapt(text_corpus, source, steps=12, run_steps=6), resumed)  # stopped at step 6
    source.rename(tmp_path / "source_gone")  # the resumed run needs only its workdir
    summary = pretrain.run(adapt(text_corpus, source, steps=12), resumed)
    assert summary["steps_this_run"] == 6 and summary["steps"] == 12
    loss = lambda w: [(r["step"], r["train/loss"]) for r in read_metrics(w) if "train/loss" in r]
    assert loss(straight) == loss(resumed)
    final = {w: flat(read_params(w / "checkpoints")[0]) for w in (straight, resumed)}
    for k, v in final[straight].items():
        np.testing.assert_array_equal(final[resumed][k], v, err_msg=k)
    first = json.loads((straight / "summary.json").read_text())
    assert summary["init_eval_loss"] == first["init_eval_loss"] and summary["lm_head"] == "reused"


def test_finetune_accepts_a_continued_run(source_run, text_corpus, tmp_path):
    from tljax import finetune
    from tljax.defaults import finetune_config
    from tljax.init_from import resolve
    run = tmp_path / "adapted"
    pretrain.run(adapt(text_corpus, source_run, steps=3), run)
    pre = resolve(str(run))
    assert pre.tokenizer.get_vocab() == tok_lib.load_tokenizer(source_run / "tokenizer").get_vocab()
    assert pre.model.hidden_size == 32 and set(pre.params) >= {"encoder", "mlm_head", "mlm_bias"}
    (tmp_path / "task").mkdir()
    task = write_keyword_task(tmp_path / "task")
    c = finetune_config()
    c.init_from, c.strategy, c.save_model = str(run), "features", False  # features: no train step to compile
    c.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv", max_len=16, batch_size=8,
                  validation_fraction=0.25)
    c.mesh.shape = (1, 1, 1)
    summary = finetune.run(c, tmp_path / "finetuned")
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["init_from"] == str(run)


# --- from Hugging Face folders and converted runs ---------------------------------------------------------


def test_hf_bert_with_an_mlm_head_keeps_it(text_corpus, tmp_path):
    folder = make_hf_bert(tmp_path / "hf_mlm", text_corpus, with_head=True)
    start = continued.load(adapt(text_corpus, f"hf:{folder}"), tmp_path / "run")
    reference = hf.load_hf(folder)
    assert start.head == "reused"
    for k, v in flat(reference.params).items():
        np.testing.assert_array_equal(flat(start.params)[k], v, err_msg=k)
    # The architecture is the folder's, not the tiny config's (max_len 64 vs 32, its vocabulary unrounded).
    assert start.config.model.max_len == 64 and start.config.model.vocab_size == len(reference.tokenizer)


def _mlm_logits_reference(params, cfg, hidden):
    """BERT's MLM head by hand: dense -> activation -> LayerNorm, then the word embeddings (tied decoder) + bias."""
    head = params["mlm_head"]
    h = hidden @ head["dense"]["kernel"] + head["dense"]["bias"]
    h = np.asarray(ACTIVATIONS[cfg.activation](jnp.asarray(h)))
    mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mean) / np.sqrt(var + cfg.layer_norm_eps) * head["ln"]["scale"] + head["ln"]["bias"]
    return h @ params["encoder"]["embeddings"]["word_embeddings"]["embedding"].T + params["mlm_bias"]


@pytest.mark.parametrize("converted", [False, True])
def test_a_bert_without_mlm_head_gets_a_fresh_one_tied_to_the_embeddings(converted, text_corpus, tmp_path):
    folder = make_hf_bert(tmp_path / "hf_model", text_corpus, with_head=False)
    spec = f"hf:{folder}"
    if converted:  # `tljax convert --from hf:FOLDER --to DIR` writes a run init_from accepts
        spec = str(hf.write_run(hf.load_hf(folder), tmp_path / "converted"))
    start = continued.load(adapt(text_corpus, spec), tmp_path / "run")
    assert start.head == "fresh"
    params = start.params
    # No decoder matrix of its own: the only [V, H] parameter is the word embedding table.
    vocab = start.config.model.vocab_size
    assert sorted(k for k, v in flat(params).items() if vocab in v.shape) == [
        "encoder/embeddings/word_embeddings/embedding", "mlm_bias"]
    assert not np.any(flat(params)["mlm_bias"])
    cfg = model_config(start.config.model)
    ids = jnp.asarray(np.random.default_rng(0).integers(5, vocab, (2, 9)), jnp.int32)
    model = LanguageModel(cfg)
    hidden = np.asarray(model.apply({"params": params}, ids, method=LanguageModel.encode))
    logits = np.asarray(model.apply({"params": params}, ids))
    np.testing.assert_allclose(logits, _mlm_logits_reference(params, cfg, hidden), rtol=1e-4, atol=1e-4)


def test_continued_pretraining_lowers_the_held_out_loss(text_corpus, tmp_path):
    """From a random BERT with a fresh head, 20 steps on the in-domain text lower the eval loss on the
    held-out part of that text, measured before and after on the same batches."""
    folder = make_hf_bert(tmp_path / "hf_model", text_corpus, with_head=False)
    summary = pretrain.run(adapt(text_corpus, f"hf:{folder}", steps=20, eval_every=20), tmp_path / "run")
    assert summary["lm_head"] == "fresh"
    assert summary["eval_loss"] < summary["init_eval_loss"] - 0.5
    assert summary["init_eval_loss"] > summary["unigram_loss"]  # the fresh head starts worse than unigram counts


def test_continuing_a_gpt_run_keeps_its_tied_lm_head(text_corpus, tmp_path, tmp_path_factory):
    source = tiny_pretrain_run(tmp_path_factory, text_corpus, "clm", "gpt", steps=3)
    config = tiny("clm", "gpt", text_corpus, steps=2)
    config.init_from = str(source)
    summary = pretrain.run(config, tmp_path / "run")
    assert summary["lm_head"] == "tied" and summary["objective"] == "clm"
    np.testing.assert_allclose(summary["init_eval_loss"],
                               json.loads((source / "summary.json").read_text())["eval_loss"], rtol=1e-5)


def test_an_untied_llama_keeps_its_own_lm_head(text_corpus, tmp_path):
    tokenizer = tok_lib.train_byte_bpe([(text_corpus / "part0.txt").read_text()], 300)
    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=0,
                                   eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    config = tiny("clm", "llama", text_corpus)
    defaults = pretrain_config("clm", "llama")
    config.model, config.data.tokenizer = defaults.model, defaults.data.tokenizer
    config.init_from = f"hf:{tmp_path / 'llama'}"
    start = continued.load(config, tmp_path / "run")
    assert start.head == "own" and start.config.model.kind == "llama" and not start.config.model.tie_embeddings
    np.testing.assert_array_equal(start.params["lm_head"]["kernel"], model.lm_head.weight.detach().numpy().T)
    mlm = adapt(text_corpus, f"hf:{tmp_path / 'llama'}")
    with pytest.raises(ConfigError, match=r"objective=mlm needs a BERT source .* is a llama model"):
        continued.load(mlm, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- refusals ---------------------------------------------------------------------------------------------


def test_bad_starting_points_are_one_line_config_errors_and_write_nothing(source_run, text_corpus, tmp_path):
    workdir = tmp_path / "run"
    clm = tiny("clm", "gpt", text_corpus)
    clm.init_from = str(source_run)
    with pytest.raises(ConfigError, match=r"objective=clm needs a gpt or llama source .* is a bert model"):
        pretrain.run(clm, workdir)
    wider = adapt(text_corpus, source_run)
    wider.model.num_layers = 3
    with pytest.raises(ConfigError, match=r"model.num_layers=3 contradicts init_from=.*whose num_layers is 2"):
        pretrain.run(wider, workdir)
    other_tokenizer = adapt(text_corpus, source_run)
    folder = make_hf_bert(tmp_path / "hf", text_corpus, with_head=True)
    other_tokenizer.data.tokenizer.path = str(folder)
    with pytest.raises(ConfigError, match=r"data.tokenizer.path=.* is not the tokenizer of init_from"):
        pretrain.run(other_tokenizer, workdir)
    new_vocab = adapt(text_corpus, source_run)
    new_vocab.data.tokenizer.vocab_size = 500
    with pytest.raises(ConfigError, match=r"data.tokenizer.vocab_size=500 .*\(no new vocabulary; its vocab_size is 300\)"):
        pretrain.run(new_vocab, workdir)
    assert not workdir.exists()


def test_cli_checks_an_explicit_field_even_at_its_default(source_run, tmp_path):
    # hidden_size=128 is pretrain_config's default; given on the command line it must match the source (32).
    r = subprocess.run([sys.executable, "-m", "tljax.cli", "pretrain", "--config", "configs/adapt_mlm.py",
                        "--workdir", str(tmp_path / "run"), f"--config.init_from={source_run}",
                        "--config.model.hidden_size=128"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"tljax: error: model.hidden_size=128 contradicts init_from={source_run}, whose hidden_size is 32: "
                     f"continued pretraining keeps the source's architecture; drop the setting (configs/adapt_mlm.py "
                     f"sets none) or set it to 32"], r.stderr
    assert not (tmp_path / "run").exists()


def test_adapt_config_sets_no_architecture(tmp_path, text_corpus):
    config = config_lib.load_config_file(REPO / "configs" / "adapt_mlm.py")
    config_lib.validate_pretrain(config)
    assert config.init_from == "hf:minilm" and config.data.source == "builtin:rotten_tomatoes_train_text"
    # Any BERT can be its source: the resolved architecture is the source's (here 2 x 32, vocabulary 150+).
    folder = make_hf_bert(tmp_path / "hf", text_corpus, with_head=True)
    pre = hf.load_hf(folder, with_weights=False)
    resolved = continued.resolve_config(config, pre, f"hf:{folder}")
    assert {k: resolved.model[k] for k in ("hidden_size", "num_layers", "max_len", "vocab_size")} == {
        "hidden_size": 32, "num_layers": 2, "max_len": 64, "vocab_size": len(pre.tokenizer)}
    config_lib.validate_pretrain(resolved)


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs").glob("*.py")))
def test_every_config_file_loads_and_validates(path):
    config = config_lib.load_config_file(REPO / "configs" / path)
    if "objective" in config:
        config_lib.validate_pretrain(config)
    elif "strategy" in config:
        config_lib.validate_finetune(config)
    else:
        config_lib.validate_word2vec(config)


# --- text sources -----------------------------------------------------------------------------------------


def test_csv_source_reads_one_column(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label,review\n"a good, long film",pos,first\n"line one\nline two",neg,second\n,neg,\n')
    assert list(sources.iter_documents(f"csv:{path}")) == ["a good, long film", "line one\nline two"]
    assert list(sources.iter_documents(f"csv:{path}@review")) == ["first", "second"]
    with pytest.raises(SourceError, match=r"has no column 'body' \(columns: text, label, review\)"):
        list(sources.iter_documents(f"csv:{path}@body"))
    assert sources.fingerprint(f"csv:{path}") != sources.fingerprint(f"csv:{path}@review")
    # A pretraining config naming a missing column is refused when validated, before any data is read.
    config = tiny("mlm", "bert", tmp_path)
    config.data.source = f"csv:{path}@body"
    with pytest.raises(SourceError, match=r"has no column 'body'"):
        config_lib.validate_pretrain(config)


def _write_prepared(cache: Path, splits: dict, corpus: list[dict]) -> None:
    rt = cache / "rotten_tomatoes"
    rt.mkdir(parents=True)
    for name, texts in splits.items():
        (rt / f"{name}.jsonl").write_text("".join(json.dumps({"text": t, "label": 1, "movie": "m"}) + "\n"
                                                  for t in texts))
    (rt / "manifest.json").write_text(json.dumps({"version": prepared.RT_PREP_VERSION}))
    (cache / "corpus").mkdir()
    for name in ("train", "eval"):
        (cache / "corpus" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (cache / "corpus" / "manifest.json").write_text("{}")


def test_rotten_tomatoes_train_text_never_yields_a_test_text(tmp_path, monkeypatch):
    monkeypatch.setenv("TLJAX_DATA_DIR", str(tmp_path))
    splits = {"train": ["a fine film", "dull and long", "shared snippet"], "validation": ["a validation review"],
              "test": ["a test review", "shared snippet"]}  # one snippet also in the test split
    corpus = [{"text": "Dictionary entry.", "source": "gcide"}, {"text": "A plot synopsis.", "source": "rt_plots"},
              {"text": "a test review", "source": "rt_plots"}]
    _write_prepared(tmp_path, splits, corpus)
    docs = list(sources.iter_documents("builtin:rotten_tomatoes_train_text"))
    assert docs == ["a fine film", "dull and long", "A plot synopsis."]
    assert not set(docs) & (set(splits["test"]) | set(splits["validation"]))
    # The held-out part used for the eval loss is part of the same texts, so also free of test texts.
    data_cfg = tiny("mlm", "bert", tmp_path).data
    data_cfg.update(source="builtin:rotten_tomatoes_train_text", holdout=0.3)
    both = list(lm_data.train_documents(data_cfg)) + list(lm_data.eval_documents(data_cfg))
    assert sorted(both) == sorted(docs)


def test_packing_ignores_a_tokenizers_own_truncation_and_padding(text_corpus):
    """MiniLM's tokenizer.json truncates and pads to 128: packing must still see whole, unpadded documents."""
    from tljax.data import packing
    padded = tok_lib.train_wordpiece([(text_corpus / "part0.txt").read_text()], 200)
    docs = ["the of and to in a is that for it as was with be by on not he this are", "the world"]
    want = packing.token_stream(docs, padded, 3)
    padded.backend_tokenizer.enable_truncation(max_length=4)
    padded.backend_tokenizer.enable_padding(length=8, pad_id=0)
    np.testing.assert_array_equal(packing.token_stream(docs, padded, 3), want)
    assert len(want) > 20 and 0 not in want.tolist()
    assert padded.backend_tokenizer.truncation is not None  # the tokenizer itself is left as it was
