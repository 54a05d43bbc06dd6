"""Fine-tuning step parity with PyTorch + transformers (bench/finetune_parity.py), the learning-rate schedule
against Hugging Face's, dropout statistics against torch's, and which model keys win with a HF `init_from`."""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import configs.bert_sentiment
from bench import finetune_parity
from lm import config_checks, models, optimizers
from lm.models import layers
from lm.weights import hf_bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Measured on all-MiniLM-L6-v2 (batch 4, length 16, 10 steps): losses agree to ~2e-7 relative, gradient norms to
# ~1e-5, parameters to ~2e-6 (float32 summation order; Adam divides gradients by their own scale, so a gradient
# component near zero can move its parameter by up to the learning rate in either implementation).
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-4
RECIPE = finetune_parity.Recipe(steps=10, total_steps=10, batch=4, length=16)


@pytest.fixture(scope="module")
def no_dropout_records(minilm_dir) -> list[dict]:
    return finetune_parity.compare(str(minilm_dir), RECIPE)


def test_ten_steps_match_pytorch_without_dropout(no_dropout_records):
    for step, record in enumerate(no_dropout_records, 1):
        ours, reference = record["ours"], record["torch"]
        assert ours["loss"] == pytest.approx(reference["loss"], rel=LOSS_RTOL), f"step {step}"
        assert ours["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-4), f"step {step}"
    assert no_dropout_records[-1]["param_diff"] < PARAM_ATOL, no_dropout_records[-1]["param_where"]
    # The run moved the parameters far more than the tolerance: the comparison is not vacuous.
    losses = [record["ours"]["loss"] for record in no_dropout_records]
    assert max(losses) - min(losses) > 1e-3


def test_learning_rate_of_every_step_equals_the_reference(no_dropout_records):
    for step, record in enumerate(no_dropout_records, 1):
        assert record["ours"]["lr"] == pytest.approx(record["torch"]["lr"], rel=1e-6, abs=1e-12), f"step {step}"


@pytest.mark.parametrize("fraction", [0.0, 0.06, 0.1, 0.5])
def test_schedule_equals_hugging_face_linear_warmup(fraction):
    """Every step of every length up to 300: our schedule vs get_linear_schedule_with_warmup with the Trainer's
    warm-up (ceil(total * ratio)); step s is the s-th update, 0-based (the first one has learning rate 0).
    Ours computes in float32: equal to 1e-6 of the peak."""
    opt = configs.bert_sentiment.get_config("files").optimizer
    opt.warmup_fraction = fraction
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=opt.learning_rate)
    steps = jnp.arange(300)  # One shape for every length: eager ops compile once.
    for total in range(1, 301):
        schedule = optimizers.learning_rate_schedule(opt, total)
        reference = transformers.get_linear_schedule_with_warmup(
            optimizer, finetune_parity.trainer_warmup_steps(total, fraction), total)
        expected = [opt.learning_rate * reference.lr_lambdas[0](step) for step in range(total)]
        np.testing.assert_allclose(np.asarray(schedule(steps))[:total], expected, rtol=1e-6,
                                   atol=1e-6 * opt.learning_rate, err_msg=f"total_steps={total}")


def test_warmup_rounds_up_as_the_trainer():
    opt = configs.bert_sentiment.get_config("files").optimizer
    opt.warmup_fraction = 0.06
    schedule = optimizers.learning_rate_schedule(opt, 217)  # 13.02 warm-up steps: the Trainer takes 14.
    assert float(schedule(13)) < opt.learning_rate
    assert float(schedule(14)) == pytest.approx(opt.learning_rate)


def test_decay_mask_matches_the_trainer_groups(minilm_dir):
    """Weight decay on the same parameters as the Trainer: everything but biases and LayerNorm weights."""
    model = transformers.BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2)
    decayed = {id(p) for p in finetune_parity.torch_decay_groups(model, 0.01)[0]["params"]}
    ours_by_hf = {"bert." + hf: "/".join(map(str, ("encoder",) + path))
                  for path, (hf, _) in hf_bert.encoder_names(model.config.num_hidden_layers).items()}
    ours_by_hf.update({"classifier.weight": "classifier/kernel", "classifier.bias": "classifier/bias"})
    torch_decayed = {ours_by_hf[name] for name, p in model.named_parameters() if id(p) in decayed}
    params = finetune_parity.Torch.params(type("Reference", (), {"model": model})())
    mask = optimizers.decay_mask(params)
    our_decayed = {optimizers.param_name(path) for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0] if leaf}
    assert len(ours_by_hf) == len(list(model.parameters()))
    assert our_decayed == torch_decayed


@pytest.mark.slow
def test_dropout_sits_where_hugging_face_puts_it(minilm_dir):
    """With dropout 0.1 and the same masks on both sides (call k gets mask k), steps agree as without dropout:
    the same places (embeddings, attention probabilities, both residual branches of each layer, the pooled
    output), the same order, the same 1 / (1 - rate) scaling."""
    recipe = finetune_parity.Recipe(steps=3, total_steps=10, batch=4, length=16, dropout=0.1)
    records = finetune_parity.compare(str(minilm_dir), recipe, shared_masks=True)
    for step, record in enumerate(records, 1):
        assert record["ours"]["loss"] == pytest.approx(record["torch"]["loss"], rel=LOSS_RTOL), f"step {step}"
    assert records[-1]["param_diff"] < PARAM_ATOL


def test_dropout_keep_rate_and_scale_match_torch():
    rate, shape = 0.1, (64, 128, 384)
    ours = np.asarray(layers.Dropout(rate)(jnp.ones(shape), deterministic=False, rngs=nnx.Rngs(dropout=0)))
    torch.manual_seed(0)  # Else torch's global generator, and the draw, depend on the tests that ran before.
    reference = torch.nn.functional.dropout(torch.ones(shape), rate, training=True).numpy()
    for values in (ours, reference):
        kept = values != 0
        assert set(np.unique(values[kept])) == {np.float32(1 / (1 - rate))}
        # Keep rate within 5 standard deviations of 0.9 (binomial over 3.1M elements).
        assert abs(kept.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / kept.size)


def test_dropout_masks_differ_between_sites_and_steps():
    """Each dropout call of a step draws its own mask, and each step its own (the key is folded with the step)."""
    dropout = layers.Dropout(0.5)
    x = jnp.ones((8, 256))

    def two_sites(step):
        rngs = nnx.Rngs(dropout=jax.random.fold_in(jax.random.key(0), step))
        return dropout(x, deterministic=False, rngs=rngs), dropout(x, deterministic=False, rngs=rngs)

    first, second = two_sites(0)
    again, _ = two_sites(1)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, again)
    # Independent halves: about a quarter of the elements are kept by both.
    both = float(((first != 0) & (second != 0)).mean())
    assert 0.2 < both < 0.3


def _hf_config(minilm_dir, **model):
    config = configs.bert_sentiment.get_config("files")
    config.init_from = str(minilm_dir)
    config.model.update(model)
    return config


def test_command_line_dropout_wins_over_the_checkpoint(minilm_dir, caplog):
    """MiniLM's config.json says dropout 0.1; the overridden rate is the one the built model uses."""
    config = _hf_config(minilm_dir, dropout_rate=0.0, attention_dropout_rate=0.25, hidden_size=999)
    with caplog.at_level(logging.INFO, logger="lm.config_checks"):
        resolved = config_checks.resolved_copy(
            config, overrides=("model.dropout_rate", "model.attention_dropout_rate", "model.hidden_size"))
    assert resolved.model.dropout_rate == 0.0
    assert resolved.model.attention_dropout_rate == 0.25
    assert resolved.model.hidden_size == 384  # A shape key: the checkpoint decides, with a warning.
    assert "config.model.hidden_size=999 is ignored" in caplog.text
    assert "from the command line: attention_dropout_rate=0.25, dropout_rate=0.0" in caplog.text
    assert "num_layers=6" in caplog.text.split("from the checkpoint:")[1]
    with nnx.use_eager_sharding(False):
        model = models.create_model(resolved.model, rngs=nnx.Rngs(0))
    assert model.dropout.rate == 0.0 and model.encoder.layers[0].dropout.rate == 0.0
    assert model.encoder.layers[0].attention.attention_dropout.rate == 0.25


def test_without_overrides_the_checkpoint_hyperparameters_apply(minilm_dir):
    resolved = config_checks.resolved_copy(_hf_config(minilm_dir, dropout_rate=0.0))
    assert resolved.model.dropout_rate == 0.1  # config.json's hidden_dropout_prob


def test_main_passes_command_line_overrides(minilm_dir, monkeypatch, tmp_path):
    """main.py hands lm.run the keys given as --config.KEY flags."""
    import sys

    import lm
    import main

    seen = {}
    monkeypatch.setattr(lm, "run", lambda config, workdir, mode, overrides=(): seen.update(
        config=config, overrides=overrides))
    argv = ["main.py", "--config=configs/bert_sentiment.py:files", f"--workdir={tmp_path}",
            "--config.model.dropout_rate=0", f"--config.init_from={minilm_dir}"]
    monkeypatch.setattr(sys, "argv", argv)
    from absl import flags

    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    main.main(["main.py"])
    assert set(seen["overrides"]) == {"model.dropout_rate", "init_from"}
    assert config_checks.resolved_copy(seen["config"], seen["overrides"]).model.dropout_rate == 0.0
