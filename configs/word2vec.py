"""word2vec (skip-gram, negative sampling) on the embedded offline corpus.

    tljax data prepare            # once: fetch and clean the offline corpus
    tljax word2vec --config configs/word2vec.py --workdir runs/w2v

Hardware: 2 CPU cores (shared). Measured (docs/word2vec.md): 7.42M words x 5 epochs in 137 s of
training (~270k words/s; 149 s wall with tokenizing and export), vocabulary 61,027, final loss 2.06;
WordSim-353 Spearman 0.620 and Google-analogy accuracy 0.262 (gensim on the same data: 0.614-0.629
and 0.249-0.253). CBOW: --config.model=cbow --config.lr=0.05, ~30 s.
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin:corpus"  # text:GLOB | jsonl:GLOB[@field] | tfds:name/config:split | builtin:corpus
    c.model = "skipgram"  # "skipgram" | "cbow" (mean of the context vectors)
    c.dim = 100  # vector size
    c.window = 5  # maximum distance; each centre word draws its window from 1..window
    c.negatives = 5  # negative samples per (centre, context) pair, from unigram^0.75
    c.min_count = 5  # words seen fewer times are dropped from the vocabulary and the text
    c.max_vocab = 0  # > 0: keep only this many most frequent words
    c.sample = 1e-3  # frequent-word subsampling threshold (0 = off)
    c.epochs = 5
    c.lr = 0.025  # SGD learning rate, decays linearly to min_lr over all epochs
    c.min_lr = 1e-4
    c.batch_size = 256  # (centre, context) pairs per SGD step
    c.steps_per_call = 256  # SGD steps per jitted call (lax.scan); fewer dispatches
    c.chunk_tokens = 200_000  # documents are windowed, subsampled and shuffled in chunks of this size
    c.table_size = 10_000_000  # negative-sampling table slots
    c.log_seconds = 10.0
    c.seed = 0
    return c
