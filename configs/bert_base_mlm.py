"""BERT-base (110M) masked-LM pretraining, for accelerators (GPU / TPU pods).

    tljax pretrain --config configs/bert_base_mlm.py --workdir gs://bucket/runs/bert_base \\
        --config.data.source='tfds:wikipedia/20230601.en:train'

Sequence 128, global batch 256, AdamW 1e-4 with 10k warmup steps, as in the original BERT phase 1.
On a single CPU this is far too slow: use configs/bert_mlm_tiny.py there. Pass
``--config.mesh.shape='(1,-1,1)'`` for FSDP across all devices.
"""
from tljax.defaults import pretrain_config


def get_config(arg=None):
    config = pretrain_config(objective="mlm", kind="bert")
    config.model.update(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, max_len=512, dtype="bfloat16")
    config.data.update(seq_len=128, batch_size=256, subsample=1.0)
    config.data.tokenizer.update(kind="wordpiece", vocab_size=30522, train_fraction=0.2)
    config.train.update(steps=1_000_000, lr=1e-4, warmup_steps=10_000, schedule="linear", end_lr_ratio=0.0,
                        eval_every=10_000, checkpoint_every=5_000, log_every=100)
    return config
