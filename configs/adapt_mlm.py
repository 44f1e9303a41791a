"""Task-adaptive MLM pretraining (continued pretraining, "TAPT"): a BERT-style checkpoint trained further
with masked LM on the task's own unlabeled text, before fine-tuning on the labels.

    tljax data prepare            # once: the offline corpus and Rotten Tomatoes
    tljax pretrain --config configs/adapt_mlm.py --workdir runs/minilm_rt
    tljax pretrain --config configs/adapt_mlm.py --workdir runs/minilm_reviews \\
        --config.init_from=hf:minilm --config.data.source='csv:reviews.csv@text'
    tljax finetune --config configs/finetune_classify.py --workdir runs/rt_tapt \\
        --config.init_from=runs/minilm_rt --config.data.num_labeled=100

Defaults: MiniLM (``hf:minilm``) on ``builtin:rotten_tomatoes_train_text`` (the 10,456 training-split reviews
and the 1,076 plot synopses; never a validation or test text), 5 % of it held out for the eval loss. The
run keeps the source's tokenizer and architecture (this file sets no ``model.*`` architecture field, so any
BERT works as ``init_from``: a tljax MLM run, a converted run, ``hf:/folder``). MiniLM has no MLM head: it
gets a fresh one (decoder tied to the word embeddings), so the loss starts near ln(30522) = 10.3 and the
first steps mostly train the head (docs/pretraining.md, "Continued pretraining").

Settings: the "Don't Stop Pretraining" recipe scaled to 2 CPU cores — a short linear schedule with
warmup, a small peak lr (1e-4: large enough for the fresh head to learn, small enough not to wash out
what the encoder knows), reviews packed into 64-token rows (a snippet is ~25 tokens), 32 rows a step.
Measured on 2 CPU cores (a machine shared with other jobs, load ~5): 300 steps x 32 x 64 tokens (614 k
tokens, ~1.5 passes over the 404 k training tokens) in 12.7 minutes (~830 tokens/s, 2.5 s a step; the
data is tokenized and packed in 1 s). Eval MLM loss on the 5 % held out: 10.48 at step 0 (the fresh
head: uniform over 30,522 tokens), 6.99 at step 50 (the unigram baseline is 7.00), 6.19 at 100, 5.62 at
200, 5.49 at 300 (masked-token accuracy 0.22); still falling, so more steps buy more.
"""
from tljax.defaults import pretrain_config


def get_config(arg=None):
    config = pretrain_config(objective="mlm", kind="bert")
    config.init_from = "hf:minilm"
    config.data.update(source="builtin:rotten_tomatoes_train_text", holdout=0.05, seq_len=64, batch_size=32)
    config.train.update(steps=300, lr=1e-4, warmup_steps=30, schedule="linear", end_lr_ratio=0.0,
                        weight_decay=0.01, log_every=10, eval_every=50, eval_batches=8, checkpoint_every=50,
                        keep_checkpoints=1)
    return config
