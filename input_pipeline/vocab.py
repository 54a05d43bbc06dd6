"""`--mode=build_vocab`: learns a WordPiece vocabulary from the pretraining corpus and writes `vocab.txt`.

The corpus is the one `config.data` names for pretraining (`input_pipeline.text_corpus`: any source that
serves documents, e.g. TFDS or .txt/.jsonl files; the training documents, at most `config.vocab.max_documents`
of them). Text is normalised as
`WordPieceTokenizer` normalises it (cleaning, and with `config.data.lowercase` lowercasing and accent
stripping), so the vocabulary fits the tokenizer that will read it. tensorflow-text's
`bert_vocab_from_dataset` then splits words as BERT does and learns the word pieces. The file starts with
[PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4), then the learned pieces.
"""

import logging

import ml_collections
import tensorflow as tf

from input_pipeline import core, text_corpus
from input_pipeline.tokenization import SPECIAL_TOKENS, normalize_text

log = logging.getLogger(__name__)


def corpus_documents(config: ml_collections.ConfigDict) -> tf.data.Dataset:
    """The training documents of config.data's source, as strings (at most config.vocab.max_documents)."""
    fields, splits = text_corpus.PretrainingData.FIELDS, text_corpus.PretrainingData.SPLITS
    core.check_source(config, fields)
    examples, _ = core.load_examples(config, fields, splits, 0, 1, text_corpus.parse_document)
    documents = examples.host_examples("train").map(lambda example: example["text"])
    return documents.take(config.vocab.max_documents) if config.vocab.max_documents > 0 else documents


def learn_vocab(documents: tf.data.Dataset, size: int, lowercase: bool, min_count: int) -> list[str]:
    """WordPiece vocabulary (special tokens first) of at most `size` entries learned from the documents."""
    from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset

    if size <= len(SPECIAL_TOKENS):
        raise ValueError(f"config.vocab.size={size} leaves no room beyond the {len(SPECIAL_TOKENS)} special tokens.")
    texts = documents.batch(1024).map(lambda texts: normalize_text(texts, lowercase))
    vocab = bert_vocab_from_dataset.bert_vocab_from_dataset(
        texts, vocab_size=size, reserved_tokens=list(SPECIAL_TOKENS),
        bert_tokenizer_params={"lower_case": False}, learn_params={"lower_thresh": min_count},
    )
    return list(SPECIAL_TOKENS) + [token for token in vocab if token not in SPECIAL_TOKENS]


def vocab_file(workdir: str) -> str:
    """Where `build_vocab` writes: WORKDIR/vocab.txt."""
    return tf.io.gfile.join(workdir, "vocab.txt")


def build_vocab(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes WORKDIR/vocab.txt learned from config.data's corpus; returns its path."""
    vocab = learn_vocab(corpus_documents(config), config.vocab.size, config.data.lowercase, config.vocab.min_count)
    tf.io.gfile.makedirs(workdir)
    path = vocab_file(workdir)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    log.info("Wrote a %d-token WordPiece vocabulary to %s; train with --config.data.vocab_path=%s", len(vocab), path,
             path)
    if len(vocab) < 0.95 * config.vocab.size:  # The learner itself stops within 5% under the size asked for.
        log.warning("config.vocab.size=%d asked for more tokens than the corpus gave (%d): the learner keeps word "
                    "pieces seen at least config.vocab.min_count=%d times. Lower min_count or add text for more.",
                    config.vocab.size, len(vocab), config.vocab.min_count)
    return path
