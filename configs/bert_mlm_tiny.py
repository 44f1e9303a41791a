"""Tiny BERT, masked-LM pretraining on the embedded offline corpus: the CPU-sized default.

    tljax data prepare            # once: fetch and clean the offline corpus
    tljax pretrain --config configs/bert_mlm_tiny.py --workdir runs/bert_tiny

Hardware: 2 CPU cores (AMD EPYC). Measured (bash scripts/main.sh from a fresh clone, idle machine):
1,100 steps × 16 × 128 tokens in 151 s (~15.8k tokens/s; 258 s on a shared machine); eval MLM loss
6.376 (perplexity 587, masked-token accuracy 0.134) against the unigram baseline 6.807 (perplexity 905).
"""
from tljax.defaults import pretrain_config


def get_config(arg=None):
    config = pretrain_config(objective="mlm", kind="bert")
    config.model.update(hidden_size=128, num_layers=4, num_heads=4, mlp_dim=512, max_len=128,
                        # No dropout: a model this small underfits in a 5-minute run; dropout only
                        # slows it (and the RNG costs CPU time).
                        dropout=0.0, attention_dropout=0.0)
    config.data.update(seq_len=128, batch_size=16, subsample=0.25)
    config.data.tokenizer.update(kind="wordpiece", vocab_size=8192)
    config.train.update(steps=1100, lr=2e-3, warmup_steps=60, eval_every=200, checkpoint_every=200)
    return config
