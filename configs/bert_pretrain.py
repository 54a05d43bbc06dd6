"""Masked-LM pretraining of BERT on raw text (Devlin et al. 2019), from scratch or continued from a checkpoint.

Usage:
  # 1. A WordPiece vocabulary from your corpus (.txt: one document a line; or .jsonl with a text field):
  python main.py --config=configs/bert_pretrain.py:files --workdir=/tmp/vocab --mode=build_vocab \
      --config.data.train_files=corpus.txt --config.vocab.size=30522
  # 2. Pretrain from scratch:
  python main.py --config=configs/bert_pretrain.py:base,files --workdir=/tmp/bert_mlm \
      --config.data.train_files=corpus.txt --config.data.vocab_path=/tmp/vocab/vocab.txt --config.model.vocab_size=-1
  # or continue pretraining an imported BERT (shape and vocabulary come from the directory; its masked-LM head
  # is loaded when it has cls.predictions.* weights, else it starts fresh):
  python main.py --config=configs/bert_pretrain.py:files --workdir=/tmp/bert_mlm --config.init_from=/path/to/bert
  # 3. Fine-tune from it: the encoder transfers, the masked-LM head is dropped, a fresh classifier is added:
  python main.py --config=configs/bert_sentiment.py:files --workdir=/tmp/cls --config.init_from=/tmp/bert_mlm ...

Arguments (comma-separated): a size (tiny, mini, small, medium, base, large), a corpus (files, wikipedia, c4,
lm1b) and `smoke` (a few steps of a tiny model; for tests and CPUs). TFDS corpora are downloaded and prepared
on first use (wikipedia and c4 are large: prepare them beforehand with `tfds build`); they are not counted up
front, so they train for `num_train_steps` and evaluate every `eval_every` steps.

Text is packed into blocks of `data.max_length` tokens across document boundaries ([CLS] at the start of
each block, [SEP] after each document), masked dynamically: 15% of the non-special tokens, of which 80%
become [MASK], 10% a random token, 10% stay (`data.mask_rate`; `data.whole_word_masking` masks whole words).
The masked-LM head (dense + GELU + LayerNorm + output bias) decodes with the word embeddings (tied). The
validation split reports masked-token loss, accuracy and perplexity; the best checkpoint is the one with
the lowest validation loss.

Recipe (Devlin et al. 2019, "BERT: Pre-training of deep bidirectional transformers", section A.2): Adam with
learning rate 1e-4, beta1 0.9, beta2 0.999, weight decay 0.01, 10k warm-up steps then linear decay, dropout
0.1, batch 256 sequences x 512 tokens (128k tokens a batch), 1M steps (~40 epochs of the 3.3B-word
BooksCorpus + English Wikipedia). BERT-base took 4 days on 4 Cloud TPUs (16 chips). Devlin et al. trained 90%
of the steps at length 128 and added next-sentence prediction; this config trains masked LM alone on full
512-token blocks, as RoBERTa (Liu et al. 2019) found that dropping NSP does not hurt. What it should reach:
BERT-base's masked-token accuracy is ~70% on held-out Wikipedia text (perplexity ~4), and fine-tuned from it
the GLUE scores of Devlin et al. (SST-2 93.5 dev).

Measured on this 2-core CPU (README "Pretraining"): continued pretraining of all-MiniLM-L6-v2 on the 7,792
SST-2 train+dev sentences (64-token blocks, batch 32, 178 steps, lr 1e-4) takes held-out masked-token
accuracy from 0% (fresh head) to 17.6% (perplexity 375); SST-2 fine-tuned from it reaches 86.2% test accuracy
against 87.4% straight from MiniLM (one seed).
"""

import ml_collections

from configs import common

CORPORA = {
    # name: (tfds name, text field, train split, validation split)
    "wikipedia": ("wikipedia/20230601.en", "text", "train[:99%]", "train[99%:]"),
    "c4": ("c4/en", "text", "train", "validation"),
    "lm1b": ("lm1b", "text", "train", "test"),
}


def corpus_data_config() -> ml_collections.ConfigDict:
    """Data keys for masked-LM pretraining from TFDS or the user's .txt/.jsonl files."""
    data = ml_collections.ConfigDict()
    data.source = "files"  # tfds | files | a source registered with input_pipeline.register_source
    data.tfds_name = ""
    data.tfds_data_dir = ""  # "" = TFDS default (~/tensorflow_datasets).
    data.tfds_manual_dir = ""  # Datasets TFDS cannot download: the folder holding the manually downloaded files.
    data.text_field = "text"  # TFDS feature, or the field of each .jsonl record.
    data.train_split = "train"
    data.validation_split = ""
    data.train_files = ""  # .txt (one document a line) or .jsonl; comma-separated paths or globs.
    data.validation_files = ""
    data.encoding = "utf-8"  # Of the files; e.g. "latin-1" for older Western European text (a BOM is dropped).
    data.validation_fraction = 0.01  # Without validation_files: this seeded fraction of the documents.
    data.vocab_path = ""  # "" = the init_from directory's vocab.txt.
    data.lowercase = True
    data.max_length = 512
    data.shuffle_buffer = 10_000  # TFDS: documents; files are permuted whole each epoch.
    data.mask_rate = 0.15
    data.whole_word_masking = False
    return data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = common.parse_arg(
        arg,
        size=("base", "tiny", "mini", "small", "medium", "large"),
        corpus=("files", "wikipedia", "c4", "lm1b"),
    )
    config = common.training_defaults()
    config.task = "mlm"
    config.eval_at_start = False  # Evaluate before the first step (the starting point of continued pretraining).

    config.model = common.bert_model_config("tiny" if variant.smoke else variant.size, head="mlm")

    config.data = corpus_data_config()
    if variant.corpus != "files":
        name, text_field, train, validation = CORPORA[variant.corpus]
        config.data.update(source="tfds", tfds_name=name, text_field=text_field, train_split=train,
                           validation_split=validation)

    config.vocab = ml_collections.ConfigDict()  # --mode=build_vocab
    config.vocab.size = 30522
    config.vocab.min_count = 10  # Words seen fewer times do not shape the vocabulary (their characters still do).
    config.vocab.max_documents = 1_000_000  # Learn from the first documents of the corpus; <= 0: all of it.

    config.global_batch_size = 256
    config.eval_batch_size = 256
    config.num_train_steps = 1_000_000
    config.eval_every = 10_000
    config.checkpoint_every = 10_000
    config.log_every = 100
    config.best_metric = "loss"
    config.best_mode = "min"
    config.eval_splits_at_end = ("validation",)
    config.eval_split = "validation"  # --mode=eval: pretraining corpora have no test split.
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_steps = 10_000
    config.optimizer.weight_decay = 0.01

    if variant.smoke:
        config.data.max_length = 32
        config.data.shuffle_buffer = 64
        config.data.validation_fraction = 0.1
        config.global_batch_size = 16
        config.eval_batch_size = 16
        config.num_train_steps = 6
        config.log_every = 2
        config.eval_every = 3
        config.checkpoint_every = 3
        config.optimizer.learning_rate = 1e-3
        config.optimizer.warmup_steps = 2
    return config
