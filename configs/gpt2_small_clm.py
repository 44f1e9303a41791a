"""GPT-2 small (124M) causal-LM pretraining, for accelerators (GPU / TPU pods).

    tljax pretrain --config configs/gpt2_small_clm.py --workdir runs/gpt2_small \\
        --config.data.source='tfds:wikipedia/20230601.en:train'

Context 1024, global batch 512 sequences, AdamW 6e-4 cosine to 10 %, bf16 compute. Far too slow on
CPU: use configs/gpt_clm_tiny.py there.
"""
from tljax.defaults import pretrain_config


def get_config(arg=None):
    config = pretrain_config(objective="clm", kind="gpt")
    config.model.update(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, max_len=1024, dtype="bfloat16")
    config.data.update(seq_len=1024, batch_size=512, subsample=1.0)
    config.data.tokenizer.update(kind="bpe", vocab_size=50257, train_fraction=0.2)
    config.train.update(steps=600_000, lr=6e-4, warmup_steps=2_000, weight_decay=0.1, b2=0.95, eps=1e-8,
                        eval_every=5_000, checkpoint_every=5_000, log_every=100)
    return config
