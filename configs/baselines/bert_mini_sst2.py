"""BERT-Mini (4 layers, hidden 256) fine-tuned on SST-2 (GLUE), from Google's compact BERT weights.

Paper: Turc et al. 2019, "Well-Read Students Learn Better: On the Importance of Pre-training Compact Models":
BERT-Mini reaches 85.9% on the SST-2 test set (GLUE server; the table of the 24 compact models in
google-research/bert). Their number is the best of a grid (batch 8-128, lr 3e-5 to 3e-4, 4 epochs); we run
one point of it, batch 32, lr 1e-4, 4 epochs, length 128, and report GLUE's validation set (test labels are
hidden; see bert_base_sst2.py).

Weights: the Hugging Face directory `google/bert_uncased_L-4_H-256_A-4` (config.json, weights, vocab.txt).
Hardware and time (estimate, not run here): 8,400 steps of a 11M-parameter encoder: about 10 minutes on one
GPU, a few hours on a laptop CPU.

  python main.py --config=configs/baselines/bert_mini_sst2.py --workdir=WORKDIR \
      --config.init_from=/path/to/bert_uncased_L-4_H-256_A-4
"""

import ml_collections

from configs import baselines, bert_sentiment


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, smoke = baselines.experiment(bert_sentiment.get_config, "mini,sst2", arg)
    if not smoke:
        config.num_epochs = 4.0
        config.optimizer.learning_rate = 1e-4
        config.optimizer.warmup_fraction = 0.1
        config.data.max_length = 128
    config.baseline = baselines.baseline_section(
        "bert_mini_sst2", smoke=smoke, paper=85.9, source="Turc et al. 2019 (GLUE test; ours: GLUE validation)",
        hardware="1 GPU", time="~10 min (estimate)", flags="--config.init_from=/path/to/bert_uncased_L-4_H-256_A-4",
    )
    return config
