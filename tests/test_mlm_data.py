"""Masked-LM input: dynamic masking statistics, packing of raw text into full blocks, corpora from files and TFDS."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import bert_pretrain
from input_pipeline import masking, text_corpus
from input_pipeline.tokenization import WordPieceTokenizer
from lm import config_checks

SPECIAL = np.array([0, 1, 2, 3, 4], np.int32)  # [PAD] [UNK] [CLS] [SEP] [MASK], as in tests/text_data.py's vocab.
MASK_ID, VOCAB = 4, 1000


def _batch(rng, rows=512, length=64) -> np.ndarray:
    """Token rows like packed blocks: [CLS] ... with [SEP]s inside and [PAD] at the end of some rows."""
    ids = rng.integers(5, VOCAB, size=(rows, length)).astype(np.int32)
    ids[:, 0] = 2
    ids[rng.random((rows, length)) < 0.05] = 3
    for row, end in enumerate(rng.integers(length // 2, length + 1, size=rows)):
        ids[row, end:] = 0
    return ids


def _mask(ids, seed, **kwargs):
    out = masking.mask_tokens(tf.constant(ids), tf.constant(seed, tf.int64), special_ids=SPECIAL, mask_id=MASK_ID,
                              vocab_size=VOCAB, **kwargs)
    return {k: v.numpy() for k, v in out.items()}


def test_masking_statistics_over_many_batches():
    rng = np.random.default_rng(0)
    selected_total = maskable_total = masked = randomized = kept = 0
    for index in range(20):
        ids = _batch(rng)
        out = _mask(ids, [7, index])
        selected = out["mlm_weights"] == 1
        special = np.isin(ids, SPECIAL)
        assert not np.any(selected & special), "a special token or padding was selected"
        np.testing.assert_array_equal(out["mlm_labels"], ids)  # The original tokens, at masked positions too.
        np.testing.assert_array_equal(out["input_ids"][~selected], ids[~selected])  # Unselected: untouched.
        new = out["input_ids"][selected]
        selected_total += selected.sum()
        maskable_total += (~special).sum()
        masked += (new == MASK_ID).sum()
        kept += (new == ids[selected]).sum()
        randomized += ((new != MASK_ID) & (new != ids[selected])).sum()
    assert maskable_total > 400_000
    assert selected_total / maskable_total == pytest.approx(0.15, abs=0.005)
    assert masked / selected_total == pytest.approx(0.8, abs=0.01)
    assert randomized / selected_total == pytest.approx(0.1, abs=0.01)
    assert kept / selected_total == pytest.approx(0.1, abs=0.01)


def test_masking_is_seeded():
    ids = _batch(np.random.default_rng(1), rows=8)
    first, again, other = _mask(ids, [1, 2]), _mask(ids, [1, 2]), _mask(ids, [1, 3])
    np.testing.assert_array_equal(first["input_ids"], again["input_ids"])
    assert not np.array_equal(first["mlm_weights"], other["mlm_weights"])


def test_whole_word_masking_keeps_words_together():
    rng = np.random.default_rng(2)
    continuation = np.zeros(VOCAB, bool)
    continuation[500:] = True  # Ids >= 500 are "##" pieces that continue the word before them.
    ids = _batch(rng, rows=256)
    out = _mask(ids, [3, 4], continuation=continuation)
    selected = out["mlm_weights"] == 1
    assert not np.any(selected & np.isin(ids, SPECIAL))
    starts = ~continuation[ids] | np.isin(ids, SPECIAL)
    for row in range(ids.shape[0]):
        word = np.cumsum(starts[row]) - 1
        for w in np.unique(word[selected[row]]):
            members = (word == w) & ~np.isin(ids[row], SPECIAL)
            assert selected[row][members].all(), f"row {row}: word {w} is only partly masked"
    words = (starts & ~np.isin(ids, SPECIAL)).sum()
    selected_words = (selected & starts).sum()
    assert selected_words / words == pytest.approx(0.15, abs=0.02)


# --- Packing -----------------------------------------------------------------------------------------------------


@pytest.fixture
def corpus_vocab(tmp_path):
    words = [f"w{i}" for i in range(40)]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return path


def _documents(num, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, 40, size=rng.integers(1, 30))) for _ in range(num)]


def _config(vocab, train_files, **overrides):
    config = bert_pretrain.get_config("smoke")
    config.data.train_files = str(train_files)
    config.data.vocab_path = str(vocab)
    config.model.vocab_size = -1
    config.update_from_flattened_dict(overrides)
    return config


def _token_ids(vocab, document):
    tokens = vocab.read_text().splitlines()
    return [tokens.index(word) for word in document.split()]


def test_packing_fills_every_block_with_documents_in_order(tmp_path, corpus_vocab):
    docs = _documents(60)
    tokenizer = WordPieceTokenizer(str(corpus_vocab), 16)
    blocks = list(text_corpus.pack_documents(tf.data.Dataset.from_tensor_slices(docs), tokenizer, 16)
                  .as_numpy_iterator())
    for block in blocks[:-1]:
        assert block["attention_mask"].all(), "a block other than the last one has padding"
    assert all(block["input_ids"][0] == tokenizer.cls_id for block in blocks)
    stream = np.concatenate([b["input_ids"][1:][b["attention_mask"][1:] == 1] for b in blocks])
    expected = np.concatenate([_token_ids(corpus_vocab, d) + [tokenizer.sep_id] for d in docs])
    np.testing.assert_array_equal(stream, expected)
    assert len(blocks) == text_corpus.count_blocks(np.array([len(d.split()) for d in docs]), 16)
    assert sum(b["attention_mask"].sum() for b in blocks) == len(expected) + len(blocks)  # No token wasted.


def test_train_batches_follow_the_epoch_order_and_resume(tmp_path, corpus_vocab):
    docs = _documents(200)
    (tmp_path / "corpus.txt").write_text("\n".join(docs) + "\n\n")
    config = _config(corpus_vocab, tmp_path / "corpus.txt", **{"data.validation_fraction": 0.0})
    data = text_corpus.PretrainingData(config)
    tokens = sum(len(d.split()) + 1 for d in docs)
    assert data.num_train_examples == -(-tokens // 31) and data.steps_per_epoch == data.num_train_examples // 16
    iterator = data.train_iterator(0)
    batches = [next(iterator) for _ in range(data.steps_per_epoch)]
    for batch in batches:
        assert batch["attention_mask"].all() and (batch["input_ids"][:, 0] == 2).all()
    stream = np.concatenate([batch["mlm_labels"][:, 1:].reshape(-1) for batch in batches])
    order = np.random.default_rng(text_corpus.epoch_seed(config.seed, 0)).permutation(len(docs))
    expected = np.concatenate([_token_ids(corpus_vocab, docs[i]) + [3] for i in order])
    np.testing.assert_array_equal(stream, expected[: len(stream)])

    resumed = data.train_iterator(3)
    for step in range(3, 6):
        again = next(resumed)
        for key in batches[step]:
            np.testing.assert_array_equal(again[key], batches[step][key], err_msg=f"{key} at step {step}")


def test_two_hosts_split_the_documents(tmp_path, corpus_vocab):
    docs = _documents(200)
    (tmp_path / "corpus.txt").write_text("\n".join(docs))
    config = _config(corpus_vocab, tmp_path / "corpus.txt", **{"data.validation_fraction": 0.0})
    hosts = [text_corpus.PretrainingData(config, i, 2) for i in range(2)]
    first, second = (next(host.train_iterator()) for host in hosts)
    assert first["input_ids"].shape == (8, 32)
    order = np.random.default_rng(text_corpus.epoch_seed(config.seed, 0)).permutation(len(docs))
    for host, batch in enumerate((first, second)):
        expected = np.concatenate([_token_ids(corpus_vocab, docs[i]) + [3] for i in order[host::2]])
        stream = batch["mlm_labels"][:, 1:].reshape(-1)
        np.testing.assert_array_equal(stream, expected[: len(stream)])

    config.data.validation_fraction = 0.25  # The validation blocks differ per host; the batch count does not.
    hosts = [text_corpus.PretrainingData(config, i, 2) for i in range(2)]
    counts = hosts[0].num_blocks("validation")
    evals = [list(host.eval_batches("validation")) for host in hosts]
    assert len(evals[0]) == len(evals[1]) == -(-max(counts) // 8)
    assert [sum(b["weight"].sum() for b in batches) for batches in evals] == counts


def test_validation_from_jsonl_is_packed_in_order_and_padded(tmp_path, corpus_vocab):
    docs = _documents(100, seed=3)
    held_out = _documents(23, seed=4)
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)))
    (tmp_path / "valid.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in held_out))
    config = _config(corpus_vocab, tmp_path / "train.jsonl", **{
        "data.text_field": "body", "data.validation_files": str(tmp_path / "valid.jsonl")})
    data = text_corpus.PretrainingData(config)
    batches = list(data.eval_batches("validation"))
    weight = np.concatenate([b["weight"] for b in batches])
    real = int(weight.sum())
    assert real == data.num_blocks("validation")[0] and len(weight) % 16 == 0 and len(weight) - real < 16
    ids = np.concatenate([b["mlm_labels"] for b in batches])
    masks = np.concatenate([b["attention_mask"] for b in batches])
    assert masks[: real - 1].all() and not masks[real:].any()
    stream = ids[:real, 1:][masks[:real, 1:] == 1]
    expected = np.concatenate([_token_ids(corpus_vocab, d) + [3] for d in held_out])
    np.testing.assert_array_equal(stream, expected)
    weights = np.concatenate([b["mlm_weights"] for b in batches])
    assert weights.sum() > 0 and not weights[real:].any()
    again = np.concatenate([b["input_ids"] for b in data.eval_batches("validation")])
    np.testing.assert_array_equal(again, np.concatenate([b["input_ids"] for b in batches]))  # Fixed masking.


@pytest.mark.parametrize("corpus", ["lm1b", "wikipedia", "c4"])
def test_tfds_corpora_on_mock_data(corpus, small_vocab):
    config = bert_pretrain.get_config(f"{corpus},smoke")
    config.data.vocab_path, config.model.vocab_size = str(small_vocab), -1
    with tfds.testing.mock_data(num_examples=40):
        data = text_corpus.PretrainingData(config)
        batch = next(data.train_iterator())
        evals = list(data.eval_batches("validation"))
    assert batch["input_ids"].shape == (16, 32) and batch["attention_mask"].all()
    assert sum(b["weight"].sum() for b in evals) == data.num_blocks("validation")[0] > 0


def test_config_errors(tmp_path, corpus_vocab):
    (tmp_path / "corpus.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="unknown extension"):
        text_corpus.PretrainingData(_config(corpus_vocab, tmp_path / "corpus.csv"))
    (tmp_path / "corpus.txt").write_text("w1 w2\n")
    with pytest.raises(ValueError, match="mask_rate"):
        text_corpus.PretrainingData(_config(corpus_vocab, tmp_path / "corpus.txt", **{"data.mask_rate": 1.5}))
    with pytest.raises(ValueError, match="fewer than one batch"):
        text_corpus.PretrainingData(_config(corpus_vocab, tmp_path / "corpus.txt"))
    config = bert_pretrain.get_config("lm1b,smoke")
    config.num_train_steps = -1
    with pytest.raises(ValueError, match="num_train_steps"):
        text_corpus.PretrainingData(config)
    config = _config(corpus_vocab, tmp_path / "corpus.txt", **{"model.head": "classifier"})
    with pytest.raises(ValueError, match="config.model.head='mlm'"):
        config_checks.resolved_copy(config)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "w1"}) + "\n")
    with pytest.raises(ValueError, match="no field 'body'"):
        text_corpus.PretrainingData(_config(corpus_vocab, tmp_path / "bad.jsonl", **{"data.text_field": "body"}))
