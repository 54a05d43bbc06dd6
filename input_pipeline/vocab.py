"""`--mode=build_vocab`: learns a WordPiece vocabulary from the pretraining corpus and writes `vocab.txt`.

The corpus is the one `config.data` names for pretraining (`input_pipeline.text_corpus`: TFDS or .txt/.jsonl
files; the training documents, at most `config.vocab.max_documents` of them). Text is normalised as
`WordPieceTokenizer` normalises it (cleaning, and with `config.data.lowercase` lowercasing and accent
stripping), so the vocabulary fits the tokenizer that will read it. tensorflow-text's
`bert_vocab_from_dataset` then splits words as BERT does and learns the word pieces. The file starts with
[PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4), then the learned pieces.
"""

import logging
import os

import ml_collections
import tensorflow as tf

from input_pipeline import text_corpus
from input_pipeline.tokenization import SPECIAL_TOKENS, normalize_text

log = logging.getLogger(__name__)


def corpus_documents(config: ml_collections.ConfigDict) -> tf.data.Dataset:
    """The training documents of config.data, as strings (at most config.vocab.max_documents)."""
    data = config.data
    if data.source == "files":
        if not data.train_files:
            raise ValueError("--mode=build_vocab reads config.data.train_files; set it (.txt or .jsonl files).")
        documents = tf.data.Dataset.from_tensor_slices(
            tf.constant(text_corpus.read_corpus("train_files", data.train_files, data.text_field), tf.string)
        )
    elif data.source == "tfds":
        documents = text_corpus.TfdsCorpus(config, 0, 1).host_documents("train", 0)
    else:
        raise ValueError(f"config.data.source={data.source!r}: use 'tfds' or 'files'.")
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


def build_vocab(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes WORKDIR/vocab.txt learned from config.data's corpus; returns its path."""
    vocab = learn_vocab(corpus_documents(config), config.vocab.size, config.data.lowercase, config.vocab.min_count)
    tf.io.gfile.makedirs(workdir)
    path = os.path.join(workdir, "vocab.txt")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    log.info("Wrote a %d-token WordPiece vocabulary to %s; train with --config.data.vocab_path=%s", len(vocab), path,
             path)
    return path
