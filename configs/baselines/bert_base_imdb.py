"""BERT-base fine-tuned on IMDB movie reviews (25,000 train / 25,000 test), from bert-base-uncased.

Paper: Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": BERT-base reaches 95.63% test accuracy
on IMDb (4.37% error) with in-task further pretraining before fine-tuning (their BERT-ITPT-FiT), which this
config does not do; their plain fine-tuning is lower. Our recipe is that paper's fine-tuning part: max length
512 (their best truncation keeps the head and tail of a review; we keep the head), batch 32, AdamW lr 2e-5,
10% warm-up, 2 epochs, on 90% of the training set (10% validates).

Hardware and time (estimate, not run here): 1,400 steps of batch 32 at length 512, about 1.5e16 FLOPs: under an
hour on one A100 or a TPU v3-8.

  python main.py --config=configs/baselines/bert_base_imdb.py --workdir=WORKDIR \
      --config.init_from=/path/to/bert-base-uncased
"""

import ml_collections

from configs import baselines, bert_sentiment


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, smoke = baselines.experiment(bert_sentiment.get_config, "base,imdb", arg)
    if not smoke:
        config.num_epochs = 2.0
        config.optimizer.learning_rate = 2e-5
        config.optimizer.warmup_fraction = 0.1
        config.data.max_length = 512
    config.baseline = baselines.baseline_section(
        "bert_base_imdb", smoke=smoke, paper=95.63,
        source="Sun et al. 2019 (BERT-base with in-task further pretraining)",
        hardware="1 A100 or TPU v3-8", time="< 1 h (estimate)", flags="--config.init_from=/path/to/bert-base-uncased",
    )
    return config
