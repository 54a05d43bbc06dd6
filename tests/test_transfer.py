"""Transfer learning: what trains (linear probing, freezing, layer-wise learning-rate decay) and export of
our BERT and ViT as Hugging Face directories that `transformers` loads with the same logits."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import lm
from configs import vision_classification
from lm import checkpointing, config_checks, experiment, models, optimizers, sharding, train
from lm import state as state_lib
from lm.serving import export_hf
from tests import text_data
from tests.test_train import files_config


@pytest.fixture
def csv_path(tmp_path):
    return text_data.write_csv(tmp_path / "reviews.csv", text_data.sentiment_rows(96))


def _leaves(tree, prefix: str) -> dict[str, np.ndarray]:
    """'/'-joined path -> host array, for the parameters under `prefix`."""
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    named = {optimizers.param_name(path): np.asarray(leaf) for path, leaf in flat}
    return {name: leaf for name, leaf in named.items() if name.startswith(prefix)}


def _size(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _optimizer_state_size(opt_state) -> int:
    """Entries of per-parameter optimizer state (Adam's mu and nu), leaving out scalar step counts."""
    return sum(leaf.size for leaf in jax.tree.leaves(opt_state) if np.ndim(leaf) > 0)


def _abstract_params(model_config: ml_collections.ConfigDict) -> dict:
    abstract = nnx.eval_shape(lambda: models.create_model(model_config, rngs=nnx.Rngs(0)))
    return state_lib.split_model(abstract)[1]


# --- What trains -----------------------------------------------------------------------------------------------


def test_linear_probing_trains_only_the_head_and_exports(tmp_path, small_vocab, csv_path):
    """trainable='head': after training, every encoder parameter is bit-for-bit its initial value, the
    classifier moved, the optimizer state covers the classifier alone, and --mode=export_hf writes a
    BertForSequenceClassification directory with the checkpoint's logits."""
    workdir = tmp_path / "run"
    config = files_config(small_vocab, csv_path, trainable="head", num_train_steps=4, eval_every=4,
                          checkpoint_every=4, **{"optimizer.weight_decay": 0.1, "optimizer.warmup_steps": 0})
    lm.run(config, str(workdir), "train")

    exp = experiment.build(config_checks.resolved_copy(config))
    initial = experiment.initial_state(exp)["params"]
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
    final, _ = ckpt.restore(4, exp.spec.abstract)
    ckpt.close()
    trained = _leaves(final["params"], "encoder/")
    for name, value in _leaves(initial, "encoder/").items():
        np.testing.assert_array_equal(trained[name], value, err_msg=name)
    assert not np.array_equal(final["params"]["classifier"]["kernel"], initial["classifier"]["kernel"])
    head = _size(exp.spec.abstract["params"]["classifier"])
    assert _optimizer_state_size(final["opt_state"]) == 2 * head  # Adam's mu and nu for the head only.

    export_dir = tmp_path / "hf"
    config.export_dir = str(export_dir)
    config.data.vocab_path = ""  # Found in the run's config.json.
    assert lm.run(config, str(workdir), "export_hf") == {"export_dir": str(export_dir)}
    assert (export_dir / "vocab.txt").read_text() == small_vocab.read_text()
    hf_config = json.loads((export_dir / "config.json").read_text())
    assert hf_config["model_type"] == "bert" and hf_config["id2label"] == {"0": "negative", "1": "positive"}
    forward = jax.jit(lambda p, *inputs: state_lib.merge_model(exp.spec.graphdef, p, {})(*inputs, deterministic=True))
    _assert_bert_matches(forward, jax.device_get(final["params"]), export_dir, 2, exp.config.model.vocab_size)


def test_freeze_regex_keeps_frozen_parameters_and_no_optimizer_state(tmp_path, small_vocab, csv_path):
    """freeze='embeddings|layers/0/': those stay bit-for-bit (weight decay included); the rest trains."""
    config = files_config(small_vocab, csv_path, freeze="embeddings|layers/0/",
                          **{"optimizer.weight_decay": 0.1, "optimizer.warmup_steps": 0})
    exp = experiment.build(config_checks.resolved_copy(config))
    state = experiment.initial_state(exp)
    before = _leaves(state["params"], "")
    step = train.jit_train_step(exp)
    batches = exp.data.train_iterator(0)
    with jax.set_mesh(exp.mesh):
        for _ in range(2):
            state, _ = step(state, sharding.global_batch(next(batches), exp.mesh))
    after = _leaves(state["params"], "")
    frozen = [n for n in before if n.startswith(("encoder/embeddings/", "encoder/layers/0/"))]
    assert len(frozen) == 5 + 16
    for name in frozen:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    for name in set(before) - set(frozen):
        assert not np.array_equal(after[name], before[name]), name
    trained = _size(state["params"]) - sum(before[name].size for name in frozen)
    assert _optimizer_state_size(state["opt_state"]) == 2 * trained


def test_resnet_probing_keeps_batchnorm_statistics():
    """For linear probing the frozen backbone runs in eval mode: BatchNorm statistics stay as they were."""
    # The folder smoke config on all devices: the init program is test_vision_train's (compilation cache).
    config = vision_classification.get_config("resnet_small,folder,smoke")
    config.trainable = "head"
    mesh = sharding.create_mesh(config.mesh)
    tx, schedule = optimizers.create_optimizer(config.optimizer, 10, config.model)
    spec = state_lib.state_spec(config.model, tx, mesh, config.axis_rules, 0,
                                trainable=lambda params: optimizers.trainable_mask(params, config))
    exp = experiment.Experiment(config, mesh, None, experiment.create_task(config), tx, schedule, spec, 10, 10, 10)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(16, 16, 16, 3)).astype(np.float32), "label": rng.integers(0, 2, 16)}
    with jax.set_mesh(mesh):
        state = state_lib.init_state(config.model, tx, spec, 0)
        stats = jax.device_get(state["batch_stats"])
        stem_kernel = np.asarray(state["params"]["stem"]["conv"]["kernel"])
        state, _ = train.jit_train_step(exp)(state, sharding.global_batch(batch, mesh))
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(jax.device_get(state["batch_stats"]))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(stem_kernel, state["params"]["stem"]["conv"]["kernel"])
    assert config.optimizer.name == "sgd"  # One momentum trace, for the head only.
    assert _optimizer_state_size(state["opt_state"]) == _size(state["params"]["head"])


def _sgd(layer_decay: float) -> ml_collections.ConfigDict:
    opt = vision_classification.get_config("vit_ti16,digits,smoke").optimizer
    opt.update(name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0,
               clip_norm=0.0, layer_decay=layer_decay)
    return opt


def _applied_rates(model_config, opt, trainable=None) -> dict[str, float]:
    """Learning rate each parameter got: one SGD step on gradients of ones."""
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), _abstract_params(model_config))
    if trainable is not None:
        params = state_lib.partition(params, trainable)[0]
    tx, _ = optimizers.create_optimizer(opt, 10, model_config)
    updates = jax.jit(lambda p: tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)[0])(params)
    rates = {name: -value for name, value in _leaves(updates, "").items()}
    for name, value in rates.items():
        assert np.all(value == value.flat[0]), name
    return {name: float(value.flat[0]) for name, value in rates.items()}


def test_layer_decay_rates_bert(small_vocab):
    """BERT, L=2, decay 0.5: embeddings lr*0.5**3, layer 0 lr*0.5**2, layer 1 lr*0.5, pooler and head lr."""
    model = files_config(small_vocab, "unused.csv").model
    model.vocab_size = 100
    rates = _applied_rates(model, _sgd(0.5))
    expected = {"encoder/embeddings/": 0.1 * 0.5**3, "encoder/layers/0/": 0.1 * 0.5**2,
                "encoder/layers/1/": 0.1 * 0.5, "encoder/pooler/": 0.1, "classifier/": 0.1}
    for name, rate in rates.items():
        prefix = next(p for p in expected if name.startswith(p))
        np.testing.assert_allclose(rate, expected[prefix], rtol=1e-6, err_msg=name)
    assert {p for p in expected if any(n.startswith(p) for n in rates)} == set(expected)
    # With the embeddings and layer 1 frozen, the remaining layers keep their rates (L comes from the model).
    config = ml_collections.ConfigDict({"model": model, "trainable": "all", "freeze": "embeddings|layers/1/"})
    mask = optimizers.trainable_mask(_abstract_params(model), config)
    partial = _applied_rates(model, _sgd(0.5), mask)
    assert not any(n.startswith(("encoder/embeddings/", "encoder/layers/1/")) for n in partial)
    assert partial == {name: rate for name, rate in rates.items() if name in partial}


def test_layer_decay_rates_vit():
    """ViT-Ti, L=12, decay 0.8: patch embedding, class token and positions lr*0.8**13; block i lr*0.8**(12-i);
    final norm and head lr."""
    model = vision_classification.get_config("vit_ti16,digits,smoke").model
    rates = _applied_rates(model, _sgd(0.8))
    for name, rate in rates.items():
        if name.startswith("embedding/"):
            expected = 0.1 * 0.8**13
        elif name.startswith("blocks/"):
            expected = 0.1 * 0.8 ** (12 - int(name.split("/")[1]))
        else:
            assert name.startswith(("norm/", "head/")), name
            expected = 0.1
        np.testing.assert_allclose(rate, expected, rtol=1e-6, err_msg=name)
    assert _applied_rates(model, _sgd(1.0)) == pytest.approx(dict.fromkeys(rates, 0.1))


# --- Errors ----------------------------------------------------------------------------------------------------


def _mask_config(model_config: ml_collections.ConfigDict, **keys) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"model": model_config, "trainable": "all", "freeze": "", **keys})


@pytest.mark.parametrize("keys, message", [
    ({"trainable": "decoder"},
     r"config.trainable='decoder' matches no parameter .*look like: classifier/bias, encoder/embeddings/.*, "
     r"encoder/layers/0/"),
    ({"trainable": "layers/(0"}, r"config.trainable='layers/\(0' is not a valid regular expression"),
    ({"freeze": "."}, r"config.freeze='.' freezes every parameter that config.trainable='all' selects \(41, e.g."),
    ({"trainable": "head", "freeze": "classifier/"},
     r"config.freeze='classifier/' freezes every parameter that config.trainable='head' selects \(2, e.g."),
    ({"freeze": "blocks/"}, r"config.freeze='blocks/' matches no parameter; .*look like: .*encoder/pooler/"),
])
def test_trainable_errors_name_key_and_value(small_vocab, keys, message):
    model_config = files_config(small_vocab, "unused.csv", **{"model.vocab_size": 100}).model
    config = _mask_config(model_config, **keys)
    with pytest.raises(ValueError, match=message):
        optimizers.trainable_mask(_abstract_params(model_config), config)


def test_head_mask_per_family(small_vocab):
    """'head' is BERT's classifier and the final linear layer of ViT, ResNet and VGG."""
    heads = {"bert": "classifier", "vit_ti16": "head", "resnet_small": "head", "vgg11": "head"}
    for name, head in heads.items():
        if name == "bert":
            model_config = files_config(small_vocab, "unused.csv", **{"model.vocab_size": 100}).model
        else:
            model_config = vision_classification.get_config(f"{name},digits,smoke").model
        mask = optimizers.trainable_mask(_abstract_params(model_config), _mask_config(model_config, trainable="head"))
        assert {n for n, trains in _leaves(mask, "").items() if trains} == {f"{head}/kernel", f"{head}/bias"}, name


def test_layer_decay_errors():
    resnet = vision_classification.get_config("resnet_small,digits,smoke")
    resnet.optimizer.layer_decay = 0.7
    with pytest.raises(ValueError, match=r"layer_decay=0.7 applies to BERT and ViT only, not to model 'resnet'"):
        optimizers.create_optimizer(resnet.optimizer, 10, resnet.model)
    vit = vision_classification.get_config("vit_ti16,digits,smoke")
    vit.optimizer.layer_decay = 0.0
    with pytest.raises(ValueError, match=r"layer_decay=0.0 must be in \(0, 1\]"):
        optimizers.create_optimizer(vit.optimizer, 10, vit.model)


# --- Export to Hugging Face ------------------------------------------------------------------------------------


def _random_model(model_config: ml_collections.ConfigDict, seed: int = 0) -> tuple:
    """(params, jitted forward) of our model with random parameters (norm scales near 1, the rest near 0), so
    that a swapped or mis-transposed weight changes the logits. Drawn by numpy: no init program to compile."""
    graphdef, abstract, batch_stats = state_lib.split_model(
        nnx.eval_shape(lambda: models.create_model(model_config, rngs=nnx.Rngs(0))))
    assert not batch_stats
    rng = np.random.default_rng(seed)

    def draw(path, leaf) -> np.ndarray:
        base = 1.0 if optimizers.param_name(path).endswith("scale") else 0.0
        return (base + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, abstract)
    forward = jax.jit(lambda p, *inputs: state_lib.merge_model(graphdef, p, {})(*inputs, deterministic=True))
    return params, forward


def _load_hf(cls, directory):
    model, info = cls.from_pretrained(str(directory), output_loading_info=True)
    assert not any(info.values()), info  # No missing, unexpected or mismatched weights.
    return model.eval()


def _assert_bert_matches(forward, params, directory, num_classes: int, vocab_size: int) -> None:
    """`forward(params, ids, mask, types)` gives the logits of the BertForSequenceClassification in `directory`."""
    import torch
    import transformers

    hf = _load_hf(transformers.BertForSequenceClassification, directory)
    assert hf.config.num_labels == num_classes and hf.config.architectures == ["BertForSequenceClassification"]
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab_size, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # A padded example.
    types = np.zeros_like(ids)
    types[2, 6:] = 1
    ours = np.asarray(forward(params, ids, mask, types))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_bert_round_trip_to_transformers(tmp_path, small_vocab):
    import transformers

    model_config = files_config(small_vocab, "unused.csv", **{"model.vocab_size": 60, "model.num_classes": 3}).model
    params, forward = _random_model(model_config)
    export_hf.write_bert(params, model_config, str(tmp_path), label_names=("neg", "neutral", "pos"),
                         vocab_path=str(small_vocab))
    _assert_bert_matches(forward, params, tmp_path, 3, 60)
    assert transformers.AutoConfig.from_pretrained(str(tmp_path)).id2label == {0: "neg", 1: "neutral", 2: "pos"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.tokenize("The Movie was great") == ["the", "movie", "was", "great"]


def test_vit_round_trip_to_transformers(tmp_path):
    import torch
    import transformers

    model_config = vision_classification.get_config("vit_ti16,digits,smoke").model
    model_config.num_classes = 5
    params, forward = _random_model(model_config)
    export_hf.write_vit(params, model_config, str(tmp_path))
    hf = _load_hf(transformers.ViTForImageClassification, tmp_path)
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    ours = np.asarray(forward(params, images))
    with torch.no_grad():
        theirs = hf(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits.numpy()
    assert np.abs(ours).max() > 0.1  # The head is not zero: the comparison means something.
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_vit_export_names_the_classes_of_the_run(tmp_path):
    """An image run's class names are in WORKDIR/serving_facts.json (its config has no label_names): the
    export's id2label carries them, as predict and serve do, instead of LABEL_0..."""
    config = vision_classification.get_config("vit_ti16,digits,smoke")
    config.num_train_steps, config.eval_every, config.checkpoint_every, config.eval_splits_at_end = 2, 2, 2, ()
    workdir = tmp_path / "run"
    lm.run(config, str(workdir), "train")
    config.export_dir = str(tmp_path / "hf")
    lm.run(config, str(workdir), "export_hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["id2label"] == {str(i): str(i) for i in range(10)}


def test_export_rejects_gap_pooling(tmp_path):
    model_config = vision_classification.get_config("vit_ti16,digits,smoke").model
    model_config.pooling = "gap"
    with pytest.raises(ValueError, match="pooling='gap'"):
        export_hf.write_vit({}, model_config, str(tmp_path))
