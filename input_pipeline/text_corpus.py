"""Raw-text corpora for masked-LM pretraining: documents ("text",) from any registered source -> packed, masked batches.

`PretrainingData(config, process_index, process_count)` (pipeline "text_corpus") reads documents through the
shared core (`input_pipeline.core`) from TFDS (`wikipedia`, `c4`, `lm1b`, any dataset with a text feature),
the user's files (`.txt`: one document a line; `.jsonl`/`.json`: the text in `config.data.text_field`) or a
source a user registers; tokenizes them with WordPiece in tf.data and packs the token stream into blocks of
`max_length`: each block is `[CLS]` followed by `max_length - 1` tokens of the stream, in which every document
ends with `[SEP]`. Documents run on across block boundaries, so no compute goes to padding; only a split's last
block is padded. Masking (`input_pipeline.masking`) then draws afresh for each batch.

- `train_iterator(start_step)`: epoch e reads this host's documents in the core's order for (config.seed, e)
  (in memory: every `process_count`-th document of a seeded permutation; streamed: a shuffle buffer) and the
  epochs run on into each other as one stream. `start_step=k` yields what `start_step=0` yields from batch k
  (the stream before it is tokenized again and skipped; each batch's masking is seeded by its index).
- `eval_batches("validation")`: packed in order, masked with a fixed seed, padded with weight-0 blocks so that
  every host yields the same number of batches.

A corpus held in memory is counted up front (blocks per epoch, so `num_epochs` works); a streamed one (TFDS) is
too large to count, so it needs `num_train_steps` and `eval_every`. Blank documents are left out.
"""

import math
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline.common import epoch_seed
from input_pipeline.core import Pipeline, numpy_batches
from input_pipeline.masking import batch_seed, mask_tokens
from input_pipeline.registry import register_pipeline
from input_pipeline.tokenization import WordPieceTokenizer, tokenizer_from_config

__all__ = ["PretrainingData", "count_blocks", "epoch_seed", "pack_documents"]

MASK_STREAM = 5
_TOKENIZE_BATCH = 256


def parse_document(record: dict) -> dict | None:
    """A document's text, stripped; a blank one is no document."""
    text = str(record["text"] if record["text"] is not None else "").strip()
    return {"text": text} if text else None


# ----------------------------------------------------------------------------------------------------
# Packing.


def pack_documents(documents: tf.data.Dataset, tokenizer: WordPieceTokenizer, max_length: int) -> tf.data.Dataset:
    """A dataset of strings -> blocks {input_ids, attention_mask, token_type_ids} of `max_length`.

    Each block is [CLS] then the next `max_length - 1` tokens of the stream `doc1 [SEP] doc2 [SEP] ...`;
    only the last block is shorter, padded with [PAD] (attention_mask 0). Empty documents are skipped.
    """
    pieces = documents.batch(_TOKENIZE_BATCH).map(tokenizer.word_pieces).unbatch()
    pieces = pieces.filter(lambda p: tf.size(p) > 0)
    sep = tf.constant([tokenizer.sep_id], tf.int32)
    stream = pieces.map(lambda p: tf.concat([p, sep], 0)).unbatch()
    cls = tf.constant([tokenizer.cls_id], tf.int32)

    def to_block(tokens: tf.Tensor) -> dict[str, tf.Tensor]:
        ids = tf.concat([cls, tokens], 0)
        padding = [[0, max_length - tf.shape(ids)[0]]]
        input_ids = tf.ensure_shape(tf.pad(ids, padding, constant_values=tokenizer.pad_id), [max_length])
        attention_mask = tf.ensure_shape(tf.pad(tf.ones_like(ids), padding), [max_length])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": tf.zeros_like(input_ids)}

    return stream.batch(max_length - 1).map(to_block)


def count_blocks(lengths: np.ndarray, max_length: int) -> int:
    """Blocks that `pack_documents` makes of documents with these word-piece counts."""
    tokens = int(np.sum(lengths[lengths > 0] + 1))
    return math.ceil(tokens / (max_length - 1))


def piece_counts(documents: tf.data.Dataset, tokenizer: WordPieceTokenizer) -> np.ndarray:
    """Word pieces per document, by running the tokenizer over the dataset once."""
    lengths = documents.batch(_TOKENIZE_BATCH).map(lambda texts: tokenizer.word_pieces(texts).row_lengths())
    counts = [np.asarray(batch) for batch in lengths.as_numpy_iterator()]
    return np.concatenate(counts) if counts else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------------
# The pipeline.


class PretrainingData(Pipeline):
    """Packed, masked masked-LM batches for this host; see the module docstring."""

    FIELDS = ("text",)
    SPLITS = ("train", "validation")
    EVERY_HOST = True  # Eval padding needs every host's block count.

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        data = config.data
        if not 0 < data.mask_rate < 1:
            raise ValueError(f"config.data.mask_rate={data.mask_rate} must be in (0, 1); BERT uses 0.15.")
        if data.max_length < 8:
            raise ValueError(f"config.data.max_length={data.max_length} is too short to pack text; use >= 8.")
        if self.source.streaming and (config.num_train_steps <= 0 or config.eval_every <= 0):
            raise ValueError(
                f"config.data.source={data.source!r} streams its corpus, which is not counted up front: set "
                f"config.num_train_steps (now {config.num_train_steps}) and config.eval_every (now "
                f"{config.eval_every}) to positive step counts."
            )

    def prepare(self, config: ml_collections.ConfigDict) -> None:
        data = config.data
        self.tokenizer = tokenizer_from_config(config)
        self.vocab_size: int = self.tokenizer.vocab_size
        self.max_length: int = data.max_length
        self._seed = config.seed
        special = [self.tokenizer.pad_id, self.tokenizer.unk_id, self.tokenizer.cls_id, self.tokenizer.sep_id,
                   self.tokenizer.mask_id]
        self._mask = dict(special_ids=np.array(special, np.int32), mask_id=self.tokenizer.mask_id,
                          vocab_size=self.vocab_size, mask_rate=data.mask_rate,
                          continuation=self.tokenizer.continuation if data.whole_word_masking else None)
        self._eval_counts: dict[str, list[int]] = {}

    def parse(self, record: dict) -> dict | None:
        return parse_document(record)

    def order_unit(self) -> int:
        return 1  # Documents are dealt to hosts one by one: a batch is made of blocks, not documents.

    def count_train(self, config: ml_collections.ConfigDict) -> tuple[int, int]:
        if not self.examples.counted:
            return sum(self.examples.host_counts("train")), config.num_train_steps
        texts = self.examples.all_examples("train").map(lambda example: example["text"])
        blocks = count_blocks(piece_counts(texts, self.tokenizer), self.max_length)
        steps = blocks // config.global_batch_size
        if steps == 0:
            raise ValueError(
                f"The training documents pack into {blocks} blocks of {self.max_length} tokens, fewer than one "
                f"batch (config.global_batch_size={config.global_batch_size}): add text or lower the batch size "
                "or max_length."
            )
        return blocks, steps

    def _documents(self, examples: tf.data.Dataset) -> tf.data.Dataset:
        return examples.map(lambda example: example["text"])

    def _masked(self, batches: tf.data.Dataset, first_index: int, stream: int) -> tf.data.Dataset:
        state = np.random.SeedSequence([self._seed, MASK_STREAM, stream, self._process_index]).generate_state(2)
        base = (int(state[0]), int(state[1]))

        def mask(index, batch):
            return {**batch, **mask_tokens(batch["input_ids"], batch_seed(base, index), **self._mask)}

        indexed = tf.data.Dataset.zip(tf.data.Dataset.counter(first_index), batches)
        return indexed.map(mask, num_parallel_calls=tf.data.AUTOTUNE)

    def train_iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Infinite per-host training batches; `start_step=k` yields what `start_step=0` yields from batch k."""
        documents = tf.data.Dataset.counter(0).flat_map(lambda e: self._documents(self.examples.train_epoch(e)))
        blocks = pack_documents(documents, self.tokenizer, self.max_length)
        batches = blocks.batch(self.train_batch_size, drop_remainder=True).skip(start_step)
        return numpy_batches(self._masked(batches, start_step, stream=0))

    def _host_blocks(self, split: str, host: int | None = None) -> tf.data.Dataset:
        return pack_documents(self._documents(self.examples.host_examples(split, host)), self.tokenizer,
                              self.max_length)

    def num_blocks(self, split: str) -> list[int]:
        """Blocks of the split on each host (counted by tokenizing it once, then remembered)."""
        if split not in self._eval_counts:
            self._eval_counts[split] = [
                count_blocks(piece_counts(self._documents(self.examples.host_examples(split, host)), self.tokenizer),
                             self.max_length)
                for host in range(self._process_count)
            ]
        return self._eval_counts[split]

    def eval_counts(self, split: str) -> list[int]:
        return self.num_blocks(split)

    def eval_examples(self, split: str) -> tf.data.Dataset:
        return self._host_blocks(split).map(lambda block: {**block, "weight": tf.constant(1.0)})

    def eval_padding(self) -> dict[str, tf.Tensor]:
        empty = tf.fill([self.max_length], self.tokenizer.pad_id)
        return {"input_ids": empty, "attention_mask": tf.zeros_like(empty), "token_type_ids": tf.zeros_like(empty),
                "weight": tf.constant(0.0)}

    def eval_batches_map(self, ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
        return self._masked(ds, 0, stream=self.SPLITS.index(split))


register_pipeline("text_corpus", PretrainingData)
