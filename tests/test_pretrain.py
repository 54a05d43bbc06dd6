"""Masked-LM pretraining: the tied head, Hugging Face MLM weights, learning, fine-tuning from a pretrained workdir."""

import csv

import jax
import numpy as np
import pytest
from flax import nnx

import lm
from configs import bert_pretrain, bert_sentiment
from lm import checkpointing, config_checks, evaluate, experiment, models
from lm import state as state_lib
from tests import model_steps, text_data

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GROUP_A = [f"ga{i}" for i in range(12)]
GROUP_B = [f"gb{i}" for i in range(12)]


def _tiny_mlm_config(vocab_size: int = 50):
    config = bert_pretrain.get_config("smoke")
    config.model.vocab_size = vocab_size
    return config


def test_mlm_head_decodes_with_the_word_embeddings():
    """The logits are transform(hidden) @ word_embeddings.T + bias: no separate decoder matrix, and changing
    the word embeddings changes the output layer."""
    model = models.create_model(_tiny_mlm_config().model, rngs=nnx.Rngs(0))
    _, params, _ = state_lib.split_model(model)
    assert set(params["mlm_head"]) == {"transform", "norm", "bias"}
    ids = jax.random.randint(jax.random.key(1), (2, 8), 5, 50)
    logits = model(ids)
    assert logits.shape == (2, 8, 50) and logits.dtype == np.float32
    hidden, _ = model.encoder(ids)
    head = model.mlm_head
    transformed = head.norm(jax.nn.gelu(head.transform(hidden), approximate=False))
    expected = transformed @ model.encoder.embeddings.word.embedding[...].T + head.bias[...]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the copies are XLA:CPU's")
def test_mlm_head_gradient_needs_no_transposed_copies_on_cpu():
    """The decoder multiplies [rows, hidden]: from the 3-D product XLA:CPU copied the logits' gradient (rows x
    vocabulary, the largest array of a masked-LM step) into transposed layouts."""
    model = models.create_model(_tiny_mlm_config().model, rngs=nnx.Rngs(0))
    head, word = model.mlm_head, model.encoder.embeddings.word
    hidden = jax.random.normal(jax.random.key(1), (3, 20, word.embedding.shape[1]))

    def loss(head, word, hidden):
        return jax.numpy.sum(jax.nn.log_softmax(head(hidden, word))[..., 0])

    hlo = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2))).lower(head, word, hidden).compile().as_text()
    logit_sized = model_steps.copies_of_size(hlo, (3 * 20 * 50,))
    assert not logit_sized, logit_sized


@pytest.mark.parametrize("with_head", [True, False])
def test_hugging_face_mlm_weights_load(tmp_path, small_vocab, with_head):
    """A HF BertForMaskedLM directory gives our model the same logits; a plain BertModel leaves the head fresh."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    vocab_size = len(small_vocab.read_text().splitlines())
    hf_config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    hf_model = (transformers.BertForMaskedLM if with_head else transformers.BertModel)(hf_config).eval()
    if with_head:
        with torch.no_grad():
            hf_model.cls.predictions.bias.normal_()  # A non-zero bias, so that loading it is visible.
    hf_model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text(small_vocab.read_text())

    config = bert_pretrain.get_config("smoke")
    config.init_from = str(tmp_path / "hf")
    config.data.train_files = str(text_data.write_corpus(tmp_path / "corpus.txt", 300))
    exp = experiment.build(config_checks.resolved_copy(config))
    params = jax.device_get(experiment.initial_state(exp)["params"])
    model = state_lib.merge_model(exp.spec.graphdef, params, {})
    ids = np.random.default_rng(0).integers(5, vocab_size, size=(2, 12))
    ours = np.asarray(model(ids))
    if with_head:
        with torch.no_grad():
            theirs = hf_model(torch.tensor(ids)).logits.numpy()
        np.testing.assert_allclose(ours, theirs, atol=2e-4)
    else:
        np.testing.assert_array_equal(params["mlm_head"]["bias"], 0.0)  # Fresh.
        np.testing.assert_allclose(params["encoder"]["embeddings"]["word"]["embedding"],
                                   hf_model.embeddings.word_embeddings.weight.detach().numpy())


# --- Learning and transfer ----------------------------------------------------------------------------------------


def _group_sentence(rng, words: list[str]) -> str:
    return " ".join(rng.choice(words, size=int(rng.integers(6, 11))))


def _write_group_data(tmp_path):
    """A corpus where each document uses the words of one group, and a labelled task: which group?

    Fine-tuning sees only the first half of each group's words, the test only the second half: a model knows
    the test words' group only if pretraining on the corpus taught it.
    """
    rng = np.random.default_rng(0)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + GROUP_A + GROUP_B) + "\n")
    corpus = [_group_sentence(rng, GROUP_A if rng.random() < 0.5 else GROUP_B) for _ in range(3000)]
    (tmp_path / "corpus.txt").write_text("\n".join(corpus) + "\n")

    def labelled(path, num, half):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for _ in range(num):
                label = int(rng.integers(2))
                words = (GROUP_B if label else GROUP_A)[half * 6: half * 6 + 6]
                writer.writerow([_group_sentence(rng, words), label])
        return str(path)

    files = {"train": labelled(tmp_path / "train.csv", 512, 0), "validation": labelled(tmp_path / "dev.csv", 128, 0),
             "test": labelled(tmp_path / "test.csv", 256, 1)}
    return vocab, files


def _classifier_config(vocab, files, init_from=""):
    config = bert_sentiment.get_config("files,smoke")
    config.init_from = init_from
    config.data.vocab_path = str(vocab) if not init_from else ""
    config.model.vocab_size = -1
    config.data.train_files, config.data.validation_files, config.data.test_files = (
        files["train"], files["validation"], files["test"])
    config.update_from_flattened_dict({"num_train_steps": 40, "eval_every": 20, "checkpoint_every": 20,
                                       "log_every": 10, "global_batch_size": 32, "eval_batch_size": 64,
                                       "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 4})
    return config


def test_pretraining_lowers_the_masked_token_loss(tmp_path, monkeypatch):
    """Each document repeats the two words of one of 12 pairs: a masked word is one of the two its document
    shows, so the masked-token loss falls from ln(29) ~ 3.4 towards ln(2) ~ 0.7."""
    rng = np.random.default_rng(1)
    words = GROUP_A + GROUP_B
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + words) + "\n")
    corpus = [" ".join(rng.choice([words[k], words[k + 12]], size=int(rng.integers(30, 60))))
              for k in rng.integers(0, 12, size=1000)]
    (tmp_path / "corpus.txt").write_text("\n".join(corpus) + "\n")
    config = bert_pretrain.get_config("smoke")
    config.data.train_files, config.data.vocab_path, config.model.vocab_size = str(tmp_path / "corpus.txt"), str(
        vocab), -1
    config.update_from_flattened_dict({"num_train_steps": 80, "eval_every": 80, "checkpoint_every": 80,
                                       "log_every": 20, "global_batch_size": 32, "eval_batch_size": 64,
                                       "optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 8,
                                       "eval_at_start": True})
    evaluations = []
    write = evaluate.write_eval_scalars
    monkeypatch.setattr(evaluate, "write_eval_scalars",
                        lambda writer, step, split, result: evaluations.append((step, result)) or write(
                            writer, step, split, result))
    final = lm.run(config, str(tmp_path / "run"), "train")["validation"]
    step, start = evaluations[0]  # eval_at_start: the validation metrics before the first step.
    assert step == 0 and [s for s, _ in evaluations] == [0, 80, 80]
    assert start["loss"] > 3.0 and start["accuracy"] < 0.15, start
    assert final["loss"] < 0.5 * start["loss"] and final["accuracy"] > 0.3, (start, final)


@pytest.mark.slow
def test_pretraining_learns_and_fine_tuning_from_it_beats_scratch(tmp_path):
    vocab, files = _write_group_data(tmp_path)
    config = bert_pretrain.get_config("smoke")
    config.data.train_files, config.data.vocab_path, config.model.vocab_size = str(tmp_path / "corpus.txt"), str(
        vocab), -1
    config.update_from_flattened_dict({"num_train_steps": 150, "eval_every": 75, "checkpoint_every": 75,
                                       "log_every": 25, "global_batch_size": 32, "eval_batch_size": 64,
                                       "optimizer.learning_rate": 2e-3, "optimizer.warmup_steps": 10})
    exp = experiment.build(config_checks.resolved_copy(config))
    with jax.set_mesh(exp.mesh):
        start = evaluate.evaluate_split(evaluate.make_eval_step(exp),
                                        experiment.initial_state(exp), exp.data, "validation", exp.mesh, exp.task)
    pretrain_dir = tmp_path / "pretrain"
    final = lm.run(config, str(pretrain_dir), "train")["validation"]
    # From ln(29) ~ 3.4 at the start towards ln(12) ~ 2.5, the best possible: any word of the document's group
    # (test_pretraining_lowers_the_masked_token_loss has a corpus with a lower floor).
    assert final["loss"] < start["loss"] - 0.4, (start, final)

    scratch = lm.run(_classifier_config(vocab, files), str(tmp_path / "scratch"), "train")["test"]
    transfer_config = _classifier_config(vocab, files, init_from=str(pretrain_dir))
    pretrained = lm.run(transfer_config, str(tmp_path / "pretrained"), "train")["test"]
    assert pretrained["accuracy"] >= scratch["accuracy"] + 0.2, (scratch, pretrained)
    assert pretrained["accuracy"] >= 0.85, pretrained

    # The encoder came from the pretraining checkpoint; the masked-LM head was dropped, a classifier added.
    exp = experiment.build(config_checks.resolved_copy(transfer_config))
    initial = jax.device_get(experiment.initial_state(exp)["params"])
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(pretrain_dir), read_only=True)
    source, _ = ckpt.restore_raw(ckpt.latest_step())
    ckpt.close()
    np.testing.assert_array_equal(initial["encoder"]["embeddings"]["word"]["embedding"],
                                  source["params"]["encoder"]["embeddings"]["word"]["embedding"])
    assert "mlm_head" not in initial and "classifier" not in source["params"]
