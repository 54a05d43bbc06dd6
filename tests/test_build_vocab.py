"""--mode=build_vocab: a WordPiece vocabulary learned from the user's corpus, which tokenizes text losslessly."""

import os
import pathlib
import subprocess
import sys

import tensorflow as tf

from input_pipeline import vocab as vocab_lib
from input_pipeline.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from tests import text_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRA = ["The Director's cut, really?", "Quite a scene: music & people!", "Filmmakers loved the endings."]


def _words(text: str) -> list[str]:
    """What BERT's basic tokenizer makes of lower-cased ASCII text: words and single punctuation marks."""
    out = []
    for word in text.lower().split():
        current = ""
        for char in word:
            if char.isalnum():
                current += char
            else:
                out += [current, char] if current else [char]
                current = ""
        if current:
            out.append(current)
    return out


def _detokenize(ids, vocab: list[str]) -> list[str]:
    words = []
    for token in (vocab[i] for i in ids):
        if token.startswith("##"):
            words[-1] += token[2:]
        else:
            words.append(token)
    return words


def test_learned_vocab_round_trips(tmp_path):
    corpus = [text for text, _ in text_data.sentiment_rows(300)] + EXTRA * 3
    documents = tf.data.Dataset.from_tensor_slices(corpus)
    vocab = vocab_lib.learn_vocab(documents, size=120, lowercase=True, min_count=2)
    assert vocab[:5] == list(SPECIAL_TOKENS) and len(vocab) <= 120 and len(set(vocab)) == len(vocab)
    assert any(token.startswith("##") for token in vocab)  # Words were split into pieces.
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tokenizer = WordPieceTokenizer(str(path), 64)
    unseen = "Wonderful music, terrible endings: the ACTOR hated it."  # Not a corpus sentence; its characters are.
    for text in corpus[:50] + EXTRA + [unseen]:
        ids = tokenizer.word_pieces(tf.constant([text]))[0].numpy()
        assert tokenizer.unk_id not in ids, text
        assert _detokenize(ids, vocab) == _words(text), text


def test_main_build_vocab_writes_vocab_txt(tmp_path):
    corpus = text_data.write_corpus(tmp_path / "corpus.txt", 200)
    workdir = tmp_path / "vocab"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "main.py", "--config=configs/bert_pretrain.py:files", f"--workdir={workdir}",
         "--mode=build_vocab", f"--config.data.train_files={corpus}", "--config.vocab.size=1000",
         "--config.vocab.min_count=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tokens = (workdir / "vocab.txt").read_text().splitlines()
    assert tokens[:5] == list(SPECIAL_TOKENS) and 30 < len(tokens) < 1000
    # The small corpus gives fewer tokens than asked: the log says so and why.
    assert f"config.vocab.size=1000 asked for more tokens than the corpus gave ({len(tokens)})" in result.stderr
    assert {"movie", "film", "great"} <= set(tokens)
