"""WordPiece tokenization for BERT inputs, inside the tf.data graph.

`WordPieceTokenizer` turns strings into fixed-length BERT inputs `[CLS] tokens [SEP] [PAD]...`,
truncated to `max_length`, with the same ids as Hugging Face's `BertTokenizer`. It runs on whole
batches of strings, so the pipeline tokenizes after batching. Inside: a few regex/ICU string ops that
reproduce Hugging Face's text cleaning, lowercasing and accent stripping, then tensorflow-text's
`FastBertTokenizer` for splitting and WordPiece. (`FastBertTokenizer`'s own lowercasing applies NFKC-style
compatibility folding, so "！" would become "!" and "…" "...": Hugging Face does not, hence our own.)
Importing this module hides GPUs from TensorFlow: tf.data only feeds numpy to JAX and must not take
the accelerator's memory.
"""

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

if tf.config.get_visible_devices("GPU"):
    tf.config.set_visible_devices([], "GPU")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Hugging Face limits a word to 100 characters, tensorflow-text to 100 bytes: they agree on ASCII words;
# a longer word becomes [UNK]. Non-ASCII words of 34-100 characters may differ (rare in practice).
MAX_BYTES_PER_WORD = 100
# What Hugging Face deletes: Python's category C (control, format, private use, unassigned) and U+FFFD,
# but not \t \n \r (whitespace to both). RE2 lacks \p{Cn}, hence the negated class of all other categories.
_CONTROL = r"[^\p{L}\p{M}\p{N}\p{P}\p{S}\p{Z}\t\n\r]|\x{FFFD}"


def load_vocab(path: str) -> list[str]:
    """Reads a WordPiece vocabulary: one token a line, the line number is the id."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"Vocabulary file {path!r} does not exist; give a BERT vocab.txt.")
    with tf.io.gfile.GFile(path, "rb") as f:
        tokens = f.read().decode("utf-8").splitlines()
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ValueError(f"Vocabulary {path!r} ({len(tokens)} tokens) lacks the special tokens {missing}.")
    return tokens


class WordPieceTokenizer:
    """Strings -> `input_ids`, `attention_mask`, `token_type_ids` (int32, [..., max_length])."""

    def __init__(self, vocab_path: str, max_length: int, lowercase: bool = True):
        if max_length < 2:
            raise ValueError(f"max_length={max_length} leaves no room for [CLS] and [SEP]; use >= 2.")
        vocab = load_vocab(vocab_path)
        self.vocab_size: int = len(vocab)
        self.max_length = max_length
        ids = {token: i for i, token in enumerate(vocab)}
        self.pad_id: int = ids["[PAD]"]
        self.unk_id: int = ids["[UNK]"]
        self.cls_id: int = ids["[CLS]"]
        self.sep_id: int = ids["[SEP]"]
        self.mask_id: int = ids["[MASK]"]
        self.lowercase = lowercase
        self._tokenizer = tf_text.FastBertTokenizer(
            vocab=vocab, token_out_type=tf.int32, unknown_token="[UNK]", max_bytes_per_word=MAX_BYTES_PER_WORD
        )
        # Word pieces that continue a word ("##ing"): whole-word masking keeps a word's pieces together.
        self.continuation = np.array([token.startswith("##") for token in vocab])
        # Traced once and then called from every tf.data pipeline: building a pipeline stays cheap.
        self._tokenize = tf.function(self._tokenize_batch, input_signature=[tf.TensorSpec([None], tf.string)])
        self._word_pieces = tf.function(
            lambda texts: self._tokenizer.tokenize(self._normalize(texts)),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )

    def __call__(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """Tokenizes a scalar or a [batch] tf.string tensor; works eagerly and inside tf.data maps."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank == 0:
            return {k: v[0] for k, v in self(texts[tf.newaxis]).items()}
        if texts.shape.rank != 1:
            raise ValueError(f"texts must be a scalar or a vector of strings, got shape {texts.shape}.")
        return self._tokenize(texts)

    def word_pieces(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[batch] strings -> ragged [batch, (pieces)] int32 ids: no [CLS], [SEP], truncation or padding."""
        return self._word_pieces(tf.convert_to_tensor(texts, tf.string))

    def _tokenize_batch(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        tokens = self._tokenizer.tokenize(self._normalize(texts))[:, : self.max_length - 2]
        rows = tokens.nrows()
        cls = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], self.cls_id))
        sep = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], self.sep_id))
        ids = tf.concat([cls, tokens, sep], axis=1)
        shape = [None, self.max_length]
        input_ids = ids.to_tensor(default_value=self.pad_id, shape=shape)
        attention_mask = tf.ones_like(ids).to_tensor(default_value=0, shape=shape)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": tf.zeros_like(input_ids),
        }

    def _normalize(self, texts: tf.Tensor) -> tf.Tensor:
        return normalize_text(texts, self.lowercase)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Eager convenience (serving, notebooks): a list of strings -> numpy arrays [len(texts), max_length]."""
        batch = self(tf.constant(list(texts), dtype=tf.string, shape=[len(texts)]))
        return {k: v.numpy() for k, v in batch.items()}


def normalize_text(texts: tf.Tensor, lowercase: bool) -> tf.Tensor:
    """Hugging Face's BasicTokenizer text cleaning, then lowercasing and accent stripping or NFC."""
    # First: tf.strings.lower stops at a NUL byte.
    texts = tf.strings.regex_replace(texts, _CONTROL, "")
    if not lowercase:
        return tf_text.normalize_utf8(texts, "NFC")
    # Hugging Face lowercases character by character: no word-final sigma.
    texts = tf.strings.lower(tf.strings.regex_replace(texts, "Σ", "σ"), encoding="utf-8")
    return tf.strings.regex_replace(tf_text.normalize_utf8(texts, "NFD"), r"\p{Mn}", "")


def resolve_vocab_path(config: ml_collections.ConfigDict) -> str:
    """config.data.vocab_path, else config.init_from/vocab.txt."""
    path = config.data.vocab_path
    if path:
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"config.data.vocab_path={path!r} does not exist. Set it to a WordPiece vocab.txt (one token a line)."
            )
        return path
    init_from = config.init_from
    if init_from and tf.io.gfile.exists(f"{init_from.rstrip('/')}/vocab.txt"):
        return f"{init_from.rstrip('/')}/vocab.txt"
    raise ValueError(
        f"No vocabulary: config.data.vocab_path is '' and config.init_from={init_from!r} holds no vocab.txt. "
        "Set config.data.vocab_path to a WordPiece vocab.txt or config.init_from to a Hugging Face BERT directory."
    )


def tokenizer_from_config(config: ml_collections.ConfigDict) -> WordPieceTokenizer:
    """The tokenizer of config.data (max_length, lowercase) with the vocabulary `resolve_vocab_path` finds."""
    return WordPieceTokenizer(resolve_vocab_path(config), config.data.max_length, config.data.lowercase)
