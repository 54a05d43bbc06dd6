"""Parity of our WordPiece tokenizer (tensorflow-text) with Hugging Face's BertTokenizer on the MiniLM vocab."""

import random

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import tokenization

MAX_LENGTH = 48

FIXED_SENTENCES = [
    "",
    "   ",
    "Hello, world!",
    "The movie was GREAT!!! 10/10 would watch again :-)",
    "I didn't like it... at all; really?",
    "Café crème brûlée, naïve façade, Ångström, São Paulo, Zürich.",
    "ÉCOLE ÉLÉMENTAIRE — «guillemets» and “smart quotes” ‘single’",
    "Numbers: 3.14159, 1,000,000, -42, 7th, 2024-01-31, $19.99, 50%",
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    "我喜欢这部电影。它非常好看！",
    "日本語のテキストと한국어 텍스트 mixed with English",
    "Emoji 😀🎬🍿 and symbols ©®™ §¶ †‡ • … ‰",
    "Tabs\tand\nnewlines\r\nand  multiple   spaces",
    "e-mail: someone@example.com, url: https://example.org/path?q=1&x=2",
    "Ελληνικά κείμενα και Русский текст и العربية",
    "x" * 150,
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101,
    "word " * 80,
    "Zero\u200bwidth and non\u00a0breaking and soft\u00adhyphen",
    "control\x00chars\x07here\ufffdreplaced",
]

WORD_TEXT = (
    "the a movie film was is not very good bad terrible wonderful acting plot actors director "
    "unforgettable overrated masterpiece disappointing cinematography screenplay Hollywood "
    "naïve résumé coöperate Mañana piñata jalapeño über façade 東京 北京 ソニー 서울 "
    "!!! ?? ... , ; : ' \" ( ) [ ] { } - -- / \\ & % $ # @ * + = < > ~ ` ^ | "
    "1 22 333 4444 55555 3.5 1e10 0x1F 2nd 1990s COVID-19 GPT-4 e.g. i.e. don't can't won't "
    "ThisIsCamelCase snake_case_words kebab-case-words ALLCAPSWORD hyperparameterization"
)
WORDS = WORD_TEXT.split()


# Code point ranges for random text: ASCII, Latin, Greek/Cyrillic, Hebrew/Arabic (combining marks),
# Devanagari, general punctuation (zero-width, bidi), symbols, CJK, Hangul, full-width forms, emoji,
# C0 controls, private use, unassigned specials.
CODE_POINT_RANGES = [
    (0x20, 0x7F), (0xA0, 0x250), (0x370, 0x530), (0x590, 0x700), (0x900, 0x980), (0x2000, 0x2070),
    (0x20A0, 0x2200), (0x3000, 0x3100), (0x4E00, 0x4F00), (0xAC00, 0xAC80), (0xFF00, 0xFF70),
    (0x1F300, 0x1F400), (0x0, 0x20), (0xE000, 0xE010), (0xFFF0, 0xFFFE),
]  # fmt: skip


def word_sentences(count: int, rng: random.Random) -> list[str]:
    """Random sentences from a mixed vocabulary, some longer than MAX_LENGTH tokens."""
    sentences = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.choice([1, 3, 8, 15, 30, 60]))]
        separators = [rng.choice([" ", " ", " ", "", "  "]) for _ in words]
        sentences.append("".join(w + s for w, s in zip(words, separators)))
    return sentences


def unicode_sentences(count: int, rng: random.Random) -> list[str]:
    """Random code points from many scripts and categories, mixed with a few words."""
    sentences = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 20)):
            low, high = rng.choice(CODE_POINT_RANGES)
            pieces.append(chr(rng.randrange(low, high)) if rng.random() < 0.5 else rng.choice(WORDS[:30]))
        sentences.append("".join(pieces))
    return sentences


def varied_sentences(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return FIXED_SENTENCES + word_sentences(300, rng) + unicode_sentences(300, rng)


def hugging_face_tokenizer(vocab_path, lowercase: bool):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(vocab_file=str(vocab_path), do_lower_case=lowercase)


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_vocab):
    return hugging_face_tokenizer(minilm_vocab, lowercase=True)


@pytest.fixture(scope="module")
def tokenizer(minilm_vocab):
    return tokenization.WordPieceTokenizer(str(minilm_vocab), max_length=MAX_LENGTH)


@pytest.mark.parametrize("lowercase", [True, False])
def test_ids_match_hugging_face(minilm_vocab, lowercase):
    tokenizer = tokenization.WordPieceTokenizer(str(minilm_vocab), max_length=MAX_LENGTH, lowercase=lowercase)
    hf_tokenizer = hugging_face_tokenizer(minilm_vocab, lowercase)
    sentences = varied_sentences()
    ours = tokenizer.encode(sentences)
    theirs = hf_tokenizer(
        sentences, max_length=MAX_LENGTH, truncation=True, padding="max_length", return_tensors="np"
    )
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert ours[key].dtype == np.int32
        assert ours[key].shape == (len(sentences), MAX_LENGTH)
        mismatched = [s for s, a, b in zip(sentences, ours[key], theirs[key]) if not np.array_equal(a, b)]
        assert not mismatched, f"{key} differs on {len(mismatched)} sentences, e.g. {mismatched[:3]}"
    assert (ours["attention_mask"].sum(axis=1) == MAX_LENGTH).any(), "no sentence was truncated"


def test_special_ids_and_layout(tokenizer, hf_tokenizer):
    assert tokenizer.vocab_size == hf_tokenizer.vocab_size
    for name in ("pad", "cls", "sep", "mask", "unk"):
        assert getattr(tokenizer, f"{name}_id") == getattr(hf_tokenizer, f"{name}_token_id")
    empty = tokenizer.encode([""])["input_ids"][0]
    assert list(empty[:3]) == [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]


def test_scalar_and_graph_inputs(tokenizer):
    scalar = tokenizer(tf.constant("a good movie"))
    assert scalar["input_ids"].shape == (MAX_LENGTH,)
    batched = tokenizer.encode(["a good movie"])
    np.testing.assert_array_equal(scalar["input_ids"].numpy(), batched["input_ids"][0])
    assert tokenizer.encode([])["input_ids"].shape == (0, MAX_LENGTH)
    ds = tf.data.Dataset.from_tensor_slices(["one", "two three", "four"]).batch(2).map(tokenizer)
    shapes = [b["input_ids"].shape.as_list() for b in ds]
    assert shapes == [[2, MAX_LENGTH], [1, MAX_LENGTH]]


def test_cased_vocab_keeps_case(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join([*tokenization.SPECIAL_TOKENS, "Hello", "hello", "É", "e"]) + "\n")
    cased = tokenization.WordPieceTokenizer(str(vocab), max_length=4, lowercase=False)
    uncased = tokenization.WordPieceTokenizer(str(vocab), max_length=4, lowercase=True)
    assert cased.encode(["Hello É"])["input_ids"][0, 1:3].tolist() == [5, 7]
    assert uncased.encode(["Hello É"])["input_ids"][0, 1:3].tolist() == [6, 8]


def test_bad_vocab_and_length(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenization.load_vocab(str(tmp_path / "missing.txt"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        tokenization.load_vocab(str(vocab))
    vocab.write_text("\n".join(tokenization.SPECIAL_TOKENS) + "\n")
    with pytest.raises(ValueError, match="max_length=1"):
        tokenization.WordPieceTokenizer(str(vocab), max_length=1)
