"""Tiny BERT, masked-LM pretraining on the embedded offline corpus: the CPU-sized default.

    tljax data prepare            # once: fetch and clean the offline corpus
    tljax pretrain --config configs/bert_mlm_tiny.py --workdir runs/bert_tiny

Hardware: 2 CPU cores (AMD EPYC). Measured on an idle machine with an empty tokenizer/packing cache (as
on a fresh clone): 1,200 steps × 64 × 64 tokens (4.9 M) in 216 s (~24.3k tokens/s; 426 s on a machine
shared with other jobs); eval MLM loss 5.946 (perplexity 382, masked-token accuracy 0.164) against the
unigram baseline 6.807 (perplexity 905): 0.86 nats below. A second training of the tokenizer gives the
same vocabulary with other ids (the trainer breaks ties in hash-map order), hence other initial
embeddings: 5.935 with the tokenizer cached by another run. The sweep behind these settings is in
docs/pretraining.md.
"""
from tljax.defaults import pretrain_config


def get_config(arg=None):
    config = pretrain_config(objective="mlm", kind="bert")
    # MLP 2H, not BERT's 4H: as good per step here and 20 % cheaper. max_len = seq_len: positions beyond
    # it would never be trained.
    config.model.update(hidden_size=128, num_layers=4, num_heads=4, mlp_dim=256, max_len=64,
                        # No dropout: a model this small underfits in a 5-minute run; dropout only
                        # slows it (and the RNG costs CPU time).
                        dropout=0.0, attention_dropout=0.0)
    # MLM learns from 15 % of the tokens, so small batches are noisy: past the unigram plateau, 64 × 64
    # learns more per token than 32 × 64 or 128 × 64 at this lr (and 64-token rows cost 16 % less per
    # token than 128-token ones).
    config.data.update(seq_len=64, batch_size=64, subsample=0.25)
    config.data.tokenizer.update(kind="wordpiece", vocab_size=8192)
    # lr 2e-3 is the edge for post-LN here: 2.5e-3 and 3e-3 learn more slowly, hidden 192 stays at
    # the unigram plateau.
    config.train.update(steps=1200, lr=2e-3, warmup_steps=100, b2=0.98, eval_every=200, checkpoint_every=200)
    return config
