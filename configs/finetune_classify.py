"""Text classification by transfer from a tljax pretraining run.

    tljax finetune --config configs/finetune_classify.py --workdir runs/rt_light \\
        --config.init_from=runs/bert_tiny --config.strategy=light \\
        --config.data.name=rotten_tomatoes --config.data.num_labeled=100
    tljax finetune --config configs/finetune_classify.py --workdir runs/my_task \\
        --config.init_from=runs/bert_tiny --config.strategy=progressive \\
        --config.data.train='csv:train.csv' --config.data.test='csv:test.csv'

Strategies: features | light | full | progressive (see docs/transfer.md); init_from=none with
model_like=<run> is the from-scratch baseline. Every run leaves its classifier in WORKDIR/model/ and the
test set's predictions in WORKDIR/predictions.csv: ``tljax predict`` / ``tljax evaluate`` / ``tljax convert``
use it (docs/deploy.md). Sized for the tiny pretrained models on 2 CPU cores:
a 100-label run takes about a minute.
"""
from tljax.defaults import finetune_config


def get_config(arg=None):
    return finetune_config()
