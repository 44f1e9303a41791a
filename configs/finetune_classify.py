"""Text classification by transfer from a tljax pretraining run.

    tljax finetune --config configs/finetune_classify.py --workdir runs/rt_light \\
        --config.init_from=runs/bert_tiny --config.strategy=light \\
        --config.data.name=rotten_tomatoes --config.data.num_labeled=100
    tljax finetune --config configs/finetune_classify.py --workdir runs/my_task \\
        --config.init_from=runs/bert_tiny --config.strategy=progressive \\
        --config.data.name= --config.data.train='csv:train.csv' --config.data.test='csv:test.csv'

Strategies: features | light | full | progressive (see docs/transfer.md); init_from=none with
model_like=<run> is the from-scratch baseline. Sized for the tiny pretrained models on 2 CPU cores:
a 100-label run takes about a minute.
"""
import ml_collections

from tljax.sharding import DEFAULT_RULES


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.init_from = ""  # pretraining workdir / its checkpoints/ / a step folder, or "none"
    c.model_like = ""  # with init_from=none: the run whose architecture and tokenizer to use
    c.strategy = "full"  # features | light | full | progressive
    c.unfrozen_layers = 2  # light: how many top layers train
    c.unfreeze_every = 40  # progressive: steps between unfreezing one more group from the top
    c.layer_lr_decay = 1.0  # < 1: ELECTRA-style layer-wise rates (top layer = base rate)
    c.pooling = "auto"  # auto (bert: mean over tokens; gpt: last token) | cls ([CLS] + pooler) | mean | last
    c.head_dropout = 0.1
    c.seed = 0
    c.probe = ml_collections.ConfigDict(dict(kind="logreg", c_grid=(0.01, 0.1, 1.0, 10.0), mlp_hidden=256))

    c.data = ml_collections.ConfigDict(dict(
        name="rotten_tomatoes",  # a built-in dataset, or "" to use train/test below
        train="", test="",  # csv:PATH | jsonl:PATH | tfds:name/config:split
        text_field="text", label_field="label",
        num_labeled=0,  # class-balanced subsample of the training set (0 = all)
        num_validation=500,  # early-stopping set, drawn from the training data left over
        max_len=64, batch_size=16))

    c.train = ml_collections.ConfigDict(dict(
        steps=300, lr=5e-4, warmup_steps=30, schedule="linear", end_lr_ratio=0.0, weight_decay=0.01,
        b1=0.9, b2=0.999, eps=1e-6, grad_clip=1.0, eval_every=25, log_every=25,
        patience=0))  # stop after this many evaluations without validation gain (0 = never)

    # Forgetting: pretraining-objective loss on the pretraining run's held-out text, before vs after.
    c.forgetting = ml_collections.ConfigDict(dict(enabled=True, sequences=256, batch_size=32))

    c.mesh = ml_collections.ConfigDict(dict(axes=("data", "fsdp", "tensor"), shape=(-1, 1, 1)))
    c.sharding_rules = DEFAULT_RULES
    return c
