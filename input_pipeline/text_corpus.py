"""Raw-text corpora for masked-LM pretraining: TFDS or the user's files -> packed, masked per-host batches.

`PretrainingData(config, process_index, process_count)` reads documents from TFDS (`wikipedia`, `c4`,
`lm1b`, any dataset with a text feature) or from files (`.txt`: one document a line; `.jsonl`/`.json`: one
JSON object a line, the text in `config.data.text_field`), tokenizes them with WordPiece in tf.data and
packs the token stream into blocks of `max_length`: each block is `[CLS]` followed by `max_length - 1`
tokens of the stream, in which every document ends with `[SEP]`. Documents run on across block
boundaries, so no compute goes to padding; only a split's last block is padded. Masking
(`input_pipeline.masking`) then draws afresh for each batch.

- `train_iterator(start_step)`: infinite per-host batches of `global_batch_size // process_count`. Epoch e
  reads this host's documents in an order seeded by (config.seed, e) and the epochs run on into each other
  as one stream. `start_step=k` yields what `start_step=0` yields from batch k (the stream before it is
  tokenized again and skipped; each batch's masking is seeded by its index).
- `eval_batches(split)`: the validation split packed in order, masked with a fixed seed, padded with
  weight-0 blocks so that every host yields the same number of batches.

Per host. Files: every host reads the files; each epoch the training documents are permuted afresh and host
i takes every `process_count`-th document from i; validation likewise without permuting. Validation comes
from `validation_files`, or is carved out of the training documents (`validation_fraction`, seeded).
TFDS: `tfds.even_splits` gives each host a fixed slice, shuffled each epoch with a `shuffle_buffer`-long
buffer. Files are counted up front (blocks per epoch, so `num_epochs` works); a TFDS corpus is too large to
count, so it needs `num_train_steps` and `eval_every`.
"""

import json
import math
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline.common import SPLIT_STREAM, check_batch_sizes, epoch_seed, eval_padding, numpy_batches
from input_pipeline.masking import batch_seed, mask_tokens
from input_pipeline.tokenization import WordPieceTokenizer

CORPUS_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl"}
MASK_STREAM = 5
EVAL_SPLITS = ("validation",)
_TOKENIZE_BATCH = 256


# ----------------------------------------------------------------------------------------------------
# Reading documents.


def expand_corpus_files(key: str, value: str) -> list[str]:
    """Comma-separated paths or globs of config.data.<key> -> sorted existing .txt/.jsonl files."""
    paths = []
    for pattern in [p.strip() for p in value.split(",") if p.strip()]:
        matches = sorted(tf.io.gfile.glob(pattern))
        if not matches:
            raise FileNotFoundError(
                f"config.data.{key}={value!r}: {pattern!r} matches no file. Fix the path or glob "
                "(comma-separated .txt or .jsonl files)."
            )
        paths.extend(matches)
    for path in paths:
        suffix = "." + path.rsplit(".", 1)[-1].lower()
        if suffix not in CORPUS_FORMATS:
            raise ValueError(
                f"config.data.{key}: {path!r} has an unknown extension; use .txt (one document a line) or "
                ".jsonl (one JSON object a line, the text in config.data.text_field)."
            )
    return paths


def read_documents(path: str, text_field: str) -> list[str]:
    """The non-blank documents of one file, in order."""
    with tf.io.gfile.GFile(path, "rb") as f:
        content = f.read().decode("utf-8-sig")
    if CORPUS_FORMATS["." + path.rsplit(".", 1)[-1].lower()] == "txt":
        return [line.strip() for line in content.splitlines() if line.strip()]
    documents = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number}: not a JSON object ({e}).") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = list(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(
                f"{path} line {number}: no field {text_field!r} (config.data.text_field); the record has {keys}."
            )
        if str(record[text_field]).strip():
            documents.append(str(record[text_field]).strip())
    return documents


def read_corpus(key: str, value: str, text_field: str) -> np.ndarray:
    documents = [doc for path in expand_corpus_files(key, value) for doc in read_documents(path, text_field)]
    if not documents:
        raise ValueError(f"config.data.{key}={value!r}: the files hold no text.")
    return np.array(documents, dtype=object)


def carve_validation(documents: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) documents: a seeded `fraction` of them validates; both keep their file order."""
    permutation = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAM])).permutation(len(documents))
    count = max(1, round(fraction * len(documents)))
    return documents[np.sort(permutation[count:])], documents[np.sort(permutation[:count])]


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
# Sources: this host's documents as tf.data.


class FileCorpus:
    def __init__(self, config: ml_collections.ConfigDict, process_index: int, process_count: int):
        data = config.data
        if not data.train_files:
            raise ValueError("config.data.source='files' needs config.data.train_files (.txt or .jsonl paths).")
        train = read_corpus("train_files", data.train_files, data.text_field)
        if data.validation_files:
            validation = read_corpus("validation_files", data.validation_files, data.text_field)
        elif data.validation_fraction > 0:
            train, validation = carve_validation(train, data.validation_fraction, config.seed)
        else:
            validation = None
        self._splits = {"train": train} if validation is None else {"train": train, "validation": validation}
        self._seed, self._index, self._count = config.seed, process_index, process_count
        self._train = tf.constant(train, dtype=tf.string)

    def has_split(self, split: str) -> bool:
        return split in self._splits

    def train_epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        indices = tf.ensure_shape(tf.numpy_function(self._host_permutation, [epoch], tf.int64, stateful=False), [None])
        return tf.data.Dataset.from_tensor_slices(tf.gather(self._train, indices))

    def _host_permutation(self, epoch: np.int64) -> np.ndarray:
        permutation = np.random.default_rng(epoch_seed(self._seed, int(epoch))).permutation(len(self._splits["train"]))
        return permutation[self._index :: self._count].astype(np.int64)

    def host_documents(self, split: str, host: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(tf.constant(self._splits[split][host :: self._count], tf.string))

    def all_documents(self, split: str) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(tf.constant(self._splits[split], tf.string))

    def num_documents(self, split: str) -> int:
        return len(self._splits[split])


class TfdsCorpus:
    def __init__(self, config: ml_collections.ConfigDict, process_index: int, process_count: int):
        data = config.data
        try:
            self._builder = tfds.builder(data.tfds_name, data_dir=data.tfds_data_dir or None)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(
                f"config.data.tfds_name={data.tfds_name!r} is not a TFDS dataset ({str(e).splitlines()[0]}). Use "
                "e.g. 'wikipedia/20230601.en', 'c4/en' or 'lm1b', or config.data.source='files'."
            ) from e
        self._builder.download_and_prepare()
        features = self._builder.info.features
        if data.text_field not in features or features[data.text_field].tf_dtype != tf.string:
            raise ValueError(
                f"config.data.text_field={data.text_field!r} is not a text feature of {self._builder.name}; "
                f"features: {list(features)}."
            )
        self._text_field, self._seed, self._buffer = data.text_field, config.seed, data.shuffle_buffer
        self._index, self._count = process_index, process_count
        self._splits = {"train": data.train_split}
        if data.validation_split:
            self._splits["validation"] = data.validation_split
        # Built once, here: under tfds.testing.mock_data, as_dataset patches the process's file system while it
        # runs, which would corrupt concurrent checkpoint writes.
        self._datasets = {
            split: [self._documents(host_split) for host_split in tfds.even_splits(name, n=process_count)]
            for split, name in self._splits.items()
        }

    def _documents(self, split: str) -> tf.data.Dataset:
        ds = self._builder.as_dataset(split=split, shuffle_files=False)
        return ds.map(lambda example: example[self._text_field])

    def has_split(self, split: str) -> bool:
        return split in self._splits

    def train_epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        seed = tf.ensure_shape(tf.numpy_function(self._shuffle_seed, [epoch], tf.int64, stateful=False), [])
        ds = self._datasets["train"][self._index]
        return ds.shuffle(self._buffer, seed=seed, reshuffle_each_iteration=False) if self._buffer > 1 else ds

    def _shuffle_seed(self, epoch: np.int64) -> np.int64:
        return np.int64(epoch_seed(self._seed, int(epoch)).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def host_documents(self, split: str, host: int) -> tf.data.Dataset:
        return self._datasets[split][host]

    def num_documents(self, split: str) -> int:
        splits = self._builder.info.splits
        return splits[self._splits[split]].num_examples if splits else 0


# ----------------------------------------------------------------------------------------------------
# The pipeline.


def check_config(config: ml_collections.ConfigDict, process_count: int) -> None:
    check_batch_sizes(config, process_count)
    data = config.data
    if data.source not in ("tfds", "files"):
        raise ValueError(f"config.data.source={data.source!r}: use 'tfds' or 'files'.")
    if not 0 < data.mask_rate < 1:
        raise ValueError(f"config.data.mask_rate={data.mask_rate} must be in (0, 1); BERT uses 0.15.")
    if not 0 <= data.validation_fraction < 1:
        raise ValueError(f"config.data.validation_fraction={data.validation_fraction} must be in [0, 1).")
    if data.max_length < 8:
        raise ValueError(f"config.data.max_length={data.max_length} is too short to pack text; use >= 8.")
    if data.source == "tfds" and (config.num_train_steps <= 0 or config.eval_every <= 0):
        raise ValueError(
            f"config.data.source='tfds' ({data.tfds_name}): a TFDS corpus is not counted up front, so set "
            f"config.num_train_steps (now {config.num_train_steps}) and config.eval_every (now "
            f"{config.eval_every}) to positive step counts."
        )


class PretrainingData:
    """Packed, masked masked-LM batches for this host; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1):
        from input_pipeline.text_classification import resolve_vocab_path

        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
        check_config(config, process_count)
        data = config.data
        self.tokenizer = WordPieceTokenizer(resolve_vocab_path(config), data.max_length, data.lowercase)
        self.vocab_size: int = self.tokenizer.vocab_size
        self.max_length: int = data.max_length
        self._source = (FileCorpus if data.source == "files" else TfdsCorpus)(config, process_index, process_count)
        self._index, self._count, self._seed = process_index, process_count, config.seed
        self.train_batch_size: int = config.global_batch_size // process_count
        self.eval_batch_size: int = config.eval_batch_size // process_count
        special = [self.tokenizer.pad_id, self.tokenizer.unk_id, self.tokenizer.cls_id, self.tokenizer.sep_id,
                   self.tokenizer.mask_id]
        self._mask = dict(special_ids=np.array(special, np.int32), mask_id=self.tokenizer.mask_id,
                          vocab_size=self.vocab_size, mask_rate=data.mask_rate,
                          continuation=self.tokenizer.continuation if data.whole_word_masking else None)
        self._eval_counts: dict[str, list[int]] = {}
        if data.source == "files":
            lengths = piece_counts(self._source.all_documents("train"), self.tokenizer)
            self.num_train_examples: int = count_blocks(lengths, data.max_length)
            self.steps_per_epoch: int = self.num_train_examples // config.global_batch_size
            if self.steps_per_epoch == 0:
                raise ValueError(
                    f"config.data.train_files packs into {self.num_train_examples} blocks of {data.max_length} "
                    f"tokens, fewer than one batch (config.global_batch_size={config.global_batch_size}): add text "
                    "or lower the batch size or max_length."
                )
        else:
            self.num_train_examples = self._source.num_documents("train")
            self.steps_per_epoch = config.num_train_steps

    def _seed_base(self, stream: int) -> tuple[int, int]:
        state = np.random.SeedSequence([self._seed, MASK_STREAM, stream, self._index]).generate_state(2)
        return int(state[0]), int(state[1])

    def _masked(self, batches: tf.data.Dataset, first_index: int, stream: int) -> tf.data.Dataset:
        base = self._seed_base(stream)

        def mask(index, batch):
            return {**batch, **mask_tokens(batch["input_ids"], batch_seed(base, index), **self._mask)}

        indexed = tf.data.Dataset.zip(tf.data.Dataset.counter(first_index), batches)
        return indexed.map(mask, num_parallel_calls=tf.data.AUTOTUNE)

    def train_iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Infinite per-host training batches; `start_step=k` yields what `start_step=0` yields from batch k."""
        documents = tf.data.Dataset.counter(0).flat_map(self._source.train_epoch)
        blocks = pack_documents(documents, self.tokenizer, self.max_length)
        batches = blocks.batch(self.train_batch_size, drop_remainder=True).skip(start_step)
        return numpy_batches(self._masked(batches, start_step, stream=0))

    def _host_blocks(self, split: str, host: int) -> tf.data.Dataset:
        return pack_documents(self._source.host_documents(split, host), self.tokenizer, self.max_length)

    def num_blocks(self, split: str) -> list[int]:
        """Blocks of the split on each host (counted by tokenizing it once, then remembered)."""
        if split not in self._eval_counts:
            self._eval_counts[split] = [
                count_blocks(piece_counts(self._source.host_documents(split, host), self.tokenizer), self.max_length)
                for host in range(self._count)
            ]
        return self._eval_counts[split]

    def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Per-host masked batches of the split once, padded with weight-0 blocks; the same count on every host."""
        if split not in EVAL_SPLITS or not self._source.has_split(split):
            raise ValueError(
                f"No {split!r} split for masked-LM evaluation: pretraining evaluates 'validation' "
                "(config.data.validation_split for TFDS, validation_files or validation_fraction > 0 for files)."
            )
        counts = self.num_blocks(split)
        num_padding = eval_padding(counts, self._index, self.eval_batch_size)
        real = self._host_blocks(split, self._index).map(lambda block: {**block, "weight": tf.constant(1.0)})
        empty = tf.fill([self.max_length], self.tokenizer.pad_id)
        padding = tf.data.Dataset.from_tensors(
            {"input_ids": empty, "attention_mask": tf.zeros_like(empty), "token_type_ids": tf.zeros_like(empty),
             "weight": tf.constant(0.0)}
        ).repeat(num_padding)
        batches = real.concatenate(padding).batch(self.eval_batch_size, drop_remainder=True)
        return numpy_batches(self._masked(batches, 0, stream=1 + EVAL_SPLITS.index(split)))
