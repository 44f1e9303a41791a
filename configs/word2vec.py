"""word2vec (skip-gram, negative sampling) on the embedded offline corpus.

    tljax data prepare            # once: fetch and clean the offline corpus
    tljax word2vec --config configs/word2vec.py --workdir runs/w2v

Hardware: 2 CPU cores (shared). Measured (docs/word2vec.md): 7.42M words x 5 epochs in 137 s of
training (~270k words/s; 149 s wall with tokenizing and export), vocabulary 61,027, final loss 2.06;
WordSim-353 Spearman 0.620 and Google-analogy accuracy 0.262 (gensim on the same data: 0.614-0.629
and 0.249-0.253). CBOW: --config.model=cbow --config.lr=0.05, ~30 s.
"""
from tljax.defaults import word2vec_config


def get_config(arg=None):
    return word2vec_config()
