"""Test setup: 8 virtual CPU devices (set before JAX is imported) and a private data cache."""
import os
import textwrap

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Tests never read or write the user's data cache (packed sequences, prepared corpora).
    if "TLJAX_TEST_KEEP_CACHE" not in os.environ:
        monkeypatch.setenv("TLJAX_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tljax_cache"))


@pytest.fixture
def one_device(monkeypatch):
    """jax.devices() is the first of the 8 virtual test devices: a run builds a one-device mesh."""
    import jax
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1] if not a else jax.local_devices(*a)[:1])


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """A folder of four .txt files of synthetic English-like text (Zipf-distributed common words), big
    enough to train a tokenizer and show learning in a few steps."""
    import numpy as np
    words = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
             "but have an they you were her she there one all we their been has when who will more no if out "
             "so said what up its about into than them can only other new some could time these two may "
             "then do first any my now such like our over man me even most made after also did many before "
             "must through back years where much your way well down should because each just those people "
             "how too little state good very make world still own see men work long get here between both "
             "life being under never day same another know while last might us great old year off come since "
             "against go came right used take three").split()
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("corpus")
    for f in range(4):
        paragraphs = []
        for _ in range(150):
            sentences = []
            for _ in range(rng.integers(2, 6)):
                # Zipf-like word choice gives the corpus learnable structure (frequent words, bigrams).
                idx = np.minimum(rng.zipf(1.3, rng.integers(5, 15)) - 1, len(words) - 1)
                sentences.append(" ".join(words[i] for i in idx).capitalize() + ".")
            paragraphs.append(" ".join(sentences))
        (root / f"part{f}.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    return root


def tiny_pretrain_config(objective, kind, corpus, **train):
    """A 2-layer, 32-wide model on ``corpus`` (a folder of .txt files): a pretraining run in seconds."""
    from tljax.defaults import pretrain_config
    c = pretrain_config(objective, kind)
    c.model.update(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=32)
    c.data.update(source=f"text:{corpus}/*.txt", eval_source="", holdout=0.1, seq_len=32, batch_size=8)
    c.data.tokenizer.update(vocab_size=300)
    c.train.update(steps=12, warmup_steps=2, lr=3e-3, log_every=3, eval_every=6, checkpoint_every=6,
                   eval_batches=2)
    c.train.update(**train)
    c.mesh.shape = (1, 1, 1)  # one of the 8 test devices: keeps the run small
    return c


@pytest.fixture(scope="session")
def pretrained_run(text_corpus, tmp_path_factory):
    """A tiny BERT MLM pretraining run (20 steps, one device) shared by the fine-tuning tests, which only
    read it; a module may define its own ``pretrained_run`` of other settings."""
    return tiny_pretrain_run(tmp_path_factory, text_corpus, steps=20)


def random_llama(seed=0, **config):
    """transformers' ``LlamaForCausalLM(LlamaConfig(**config))`` in eval mode with every weight N(0, 0.2)
    (norm scales 1 + N(0, 0.2)): larger than the default init, so parity tests see non-trivial logits."""
    import torch
    import transformers
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(noise + 1.0 if name.endswith("norm.weight") else noise)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A random transformers Llama (3 layers, grouped-query, untied head, 512 positions) with a 300-token
    byte-level BPE, saved as a Hugging Face folder: (folder, the PyTorch model, tokenizer). The causal LM
    of the prompting tests (tljax zeroshot, recipe=prompt_probe), which only read it."""
    from test_llama import SHAPES, make_llama
    from tljax.data import tokenizer as tok_lib
    docs = ["the of and to in a is that for it as was with be by on not he this are little great"] * 20
    tokenizer = tok_lib.train_byte_bpe(docs, 300)
    folder = tmp_path_factory.mktemp("llama")
    model = make_llama(folder, dict(SHAPES["gqa_untied"], max_position_embeddings=512), tokenizer, seed=1)
    return folder, model, tokenizer


def write_keyword_task(root, sizes=(("train", 120), ("test", 40)), columns=("text", "label"),
                       labels=("neg", "pos"), seed=0):
    """CSV files root/<split>.csv of a two-class task: each text is 8 filler words plus "little" (class 0)
    or "great" (class 1), shuffled; classes alternate row by row."""
    import csv
    import numpy as np
    rng = np.random.default_rng(seed)
    filler = "the of and to in a is that for it as was with be by on not he this are".split()
    for name, n in sizes:
        with open(root / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(columns))
            for i in range(n):
                words = list(rng.choice(filler, 8)) + [("little", "great")[i % 2]]
                rng.shuffle(words)
                w.writerow([" ".join(words), labels[i % 2]])
    return root


def tiny_pretrain_run(tmp_path_factory, corpus, objective="mlm", kind="bert", **train):
    """A finished tiny pretraining run (``tiny_pretrain_config``) in a new folder, made on one device with its
    own data cache: for module-scoped fixtures, where the function-scoped ones are not active yet."""
    import jax
    from tljax import pretrain
    workdir = tmp_path_factory.mktemp(f"pretrained_{objective}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLJAX_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
        pretrain.run(tiny_pretrain_config(objective, kind, corpus, **train), workdir)
    return workdir


def write_tiny_bert_config(path, corpus):
    """A config file for a 2-layer 32-wide BERT pretrained with MLM for 8 steps on ``corpus``/*.txt (the
    experiments' tljax start, made in seconds). Returns ``path``."""
    path.write_text(textwrap.dedent(f"""
        from tljax.defaults import pretrain_config
        def get_config(arg=None):
            c = pretrain_config("mlm", "bert")
            c.model.update(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=32)
            c.data.update(source="text:{corpus}/*.txt", holdout=0.1, seq_len=32, batch_size=8)
            c.data.tokenizer.update(vocab_size=300)
            c.train.update(steps=8, warmup_steps=2, lr=3e-3, log_every=4, eval_every=8, checkpoint_every=8,
                           eval_batches=2)
            c.mesh.shape = (1, 1, 1)
            return c
    """))
    return path
