"""Vision weight import: parity with transformers' ViT and ResNet and with keras.applications' VGG and ResNet50.

Every reference has random weights (perturbed so that LayerNorms, biases and BatchNorm running statistics
are not at their trivial init), is saved by the test in the format under test, imported, and run in fp32
eval mode on the same images as ours. Keras' VGG16 runs at 64x64 (fc1 then reads a 2x2x512 map, which
checks the flattening order; 224x224 would cost ~10x more on 2 cores), VGG19 without its top at 32x32,
and ResNet50 at 32x32 (its minimum) with its top.
"""

import json
import pathlib
import zipfile

import h5py
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.vision_models import vision_model_config
from lm.models import resnet, vgg, vit
from lm.weights import hf_bert, hf_resnet, hf_vit, keras_apps, pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # fp32 max abs logit difference


def _perturb_torch(model: "torch.nn.Module", seed: int = 0, image_size: int = 0) -> None:
    """Every parameter moved off its init. BatchNorm running statistics (with `image_size`) are first set to
    the batch statistics of random images, then perturbed so that they are not the statistics of any batch,
    with 0.1 added to each variance. Why: with random statistics activations grow through the depth, and
    channels that a random ReLU net leaves nearly constant get a normalising gain up to 1/sqrt(eps); either
    way fp32 rounding alone (ours and the reference's, each measured against a float64 Keras run) exceeded
    1e-4 on ResNet-50's logits. Trained networks keep activations O(1), as these statistics do."""
    generator = torch.Generator().manual_seed(seed)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        if norms:
            for module in norms:
                module.momentum = 1.0
            model.train()
            model(pixel_values=torch.randn((8, 3, image_size, image_size), generator=generator))
            model.eval()
            for module in norms:
                module.momentum = 0.1
                std = module.running_var.sqrt()
                module.running_mean.add_(0.1 * std * torch.randn(std.shape, generator=generator))
                module.running_var.mul_(0.8 + 0.4 * torch.rand(std.shape, generator=generator)).add_(0.1)


def _images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def _torch_logits(model: "torch.nn.Module", images: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), **kwargs).logits.numpy()


def _abstract(module_class, config) -> nnx.Module:
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: module_class(config, rngs=nnx.Rngs(0)))


def _templates(model: nnx.Module) -> tuple[dict, dict]:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param)), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))


def _merge(model: nnx.Module, params: dict, batch_stats: dict | None = None) -> nnx.Module:
    """A runnable model from an abstract one; leaves the import left abstract (kept fresh) become zeros."""
    graphdef, param_state, stat_state = nnx.split(model, nnx.Param, nnx.BatchStat)
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x, params)
    nnx.replace_by_pure_dict(param_state, params)
    if batch_stats:
        nnx.replace_by_pure_dict(stat_state, batch_stats)
    return nnx.merge(graphdef, param_state, stat_state)


@nnx.jit
def _logits(model, images):
    return model(images, deterministic=True)


def _max_difference(ours: nnx.Module, images: np.ndarray, expected: np.ndarray) -> float:
    got = np.asarray(_logits(ours, images))
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


# --- Hugging Face ViT ----------------------------------------------------------------------------------

# ViT-Ti's width and heads with 3 layers instead of 12, registered as a variant for these tests: the mapping
# is the same per layer, and 4x fewer layers keep the tests in seconds on 2 cores.
VIT_KWARGS = dict(hidden_size=192, num_hidden_layers=3, num_attention_heads=3, intermediate_size=768,
                  image_size=32, patch_size=16)
TINY_VIT = "Ti-3"


@pytest.fixture(scope="module", autouse=True)
def tiny_vit_variant():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(vit.VIT_SIZES, TINY_VIT, (192, 3, 3))
        yield


@pytest.fixture(scope="module")
def hf_vit_classifier(tmp_path_factory):
    """A random 3-layer ViT-Ti/16 ViTForImageClassification at 32x32 with 5 classes, saved as model.safetensors."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(**VIT_KWARGS, num_labels=5)
    model = transformers.ViTForImageClassification(config).eval()
    _perturb_torch(model)
    path = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(path)
    return path, model


def _our_vit(path: pathlib.Path, **overrides) -> tuple[vit.ViTConfig, nnx.Module]:
    values = hf_vit.read_config(str(path))
    values.pop("image_size")
    values.update(image_size=32, dropout_rate=0.0, **overrides)
    config = vit.ViTConfig(**values)
    return config, _abstract(vit.VisionTransformer, config)


def test_vit_matches_transformers(hf_vit_classifier):
    path, reference = hf_vit_classifier
    assert (path / "model.safetensors").is_file()
    assert hf_vit.read_config(str(path)) == {
        "variant": TINY_VIT, "patch_size": 16, "image_size": 32, "pooling": "cls", "layer_norm_eps": 1e-12,
        "num_classes": 5,
    }
    _, model = _our_vit(path)
    params, _, report = hf_vit.load(str(path), _templates(model)[0])
    assert report["new"] == [] and report["unused"] == [] and report["notes"] == []
    assert len(report["loaded"]) == 4 + 2 + 2 + 3 * 16
    images = _images(32)
    difference = _max_difference(_merge(model, params), images, _torch_logits(reference, images))
    assert difference <= TOLERANCE, difference


def test_vit_model_bin_without_classifier(tmp_path):
    """ViTModel (pooler, no classifier) from pytorch_model.bin: our head stays fresh; with an identity head our
    'logits' are the final LayerNorm of the class token, i.e. ViTModel's last_hidden_state[:, 0]."""
    torch.manual_seed(1)
    reference = transformers.ViTModel(transformers.ViTConfig(**VIT_KWARGS), add_pooling_layer=True).eval()
    _perturb_torch(reference, seed=1)
    reference.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    assert "num_classes" not in hf_vit.read_config(str(tmp_path))
    _, model = _our_vit(tmp_path, num_classes=192)
    params, _, report = hf_vit.load(str(tmp_path), _templates(model)[0])
    assert report["new"] == ["head/bias", "head/kernel"] and report["unused"] == []
    assert report["ignored"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert "no classifier" in report["notes"][0]
    params["head"] = {"kernel": np.eye(192, dtype=np.float32), "bias": np.zeros(192, np.float32)}
    images = _images(32, seed=1)
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state[:, 0]
    difference = _max_difference(_merge(model, params), images, expected.numpy())
    assert difference <= TOLERANCE, difference


def test_vit_resampled_positions_and_fresh_head(hf_vit_classifier):
    """A 48x48 model (3x3 patches) from the 32x32 checkpoint (2x2), with 7 classes instead of 5."""
    path, _ = hf_vit_classifier
    config = vit.ViTConfig(variant=TINY_VIT, patch_size=16, image_size=48, num_classes=7, dropout_rate=0.0)
    model = _abstract(vit.VisionTransformer, config)
    template = _templates(model)[0]
    params, _, report = hf_vit.load(str(path), template)
    assert report["new"] == ["head/bias", "head/kernel"]
    assert report["unused"] == ["classifier.bias", "classifier.weight"]
    assert any("resampled from a 2x2 to a 3x3" in note for note in report["notes"])
    assert params["head"]["kernel"] is template["head"]["kernel"]  # kept as it was
    checkpoint = hf_bert.read_state_dict(str(path))["vit.embeddings.position_embeddings"]
    expected = hf_vit.resample_position_embeddings(checkpoint[0], 3, has_class_token=True)
    np.testing.assert_array_equal(params["embedding"]["position"], expected)
    assert np.isfinite(np.asarray(_logits(_merge(model, params), _images(48)))).all()
    gap = _abstract(vit.VisionTransformer, vit.ViTConfig(variant=TINY_VIT, image_size=32, num_classes=5, pooling="gap"))
    params, _, report = hf_vit.load(str(path), _templates(gap)[0])
    assert report["unused"] == ["vit.embeddings.cls_token"] and report["new"] == []
    np.testing.assert_array_equal(params["embedding"]["position"], checkpoint[0, 1:])


def test_resample_position_embeddings():
    rng = np.random.default_rng(0)
    posemb = rng.normal(size=(1 + 4 * 4, 8)).astype(np.float32)
    for method in ("bicubic", "bilinear"):
        same = hf_vit.resample_position_embeddings(posemb, 4, has_class_token=True, method=method)
        np.testing.assert_allclose(same, posemb, atol=1e-6)
    bigger = hf_vit.resample_position_embeddings(posemb, (6, 5), has_class_token=True)
    assert bigger.shape == (1 + 30, 8)
    np.testing.assert_array_equal(bigger[0], posemb[0])
    batched = hf_vit.resample_position_embeddings(posemb[None, 1:], 2, has_class_token=False)
    assert batched.shape == (1, 4, 8)
    constant = hf_vit.resample_position_embeddings(np.ones((9, 3), np.float32), 5, has_class_token=False)
    np.testing.assert_allclose(constant, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="do not form a square grid"):
        hf_vit.resample_position_embeddings(posemb[:-1], 3, has_class_token=True)


def test_vit_config_variants_and_errors(hf_vit_classifier, tmp_path):
    path, _ = hf_vit_classifier
    config = json.loads((path / "config.json").read_text())
    for variant, (hidden, layers, heads) in (("Ti", (192, 12, 3)), ("B", (768, 12, 12)), ("L", (1024, 24, 16))):
        sizes = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden)
        (tmp_path / "config.json").write_text(json.dumps({**config, **sizes, "image_size": 224}))
        assert hf_vit.read_config(str(tmp_path))["variant"] == variant
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 6}))
    with pytest.raises(ValueError, match=r"\(192, 6, 3\) is none of our ViT variants"):
        hf_vit.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    with pytest.raises(ValueError, match="hidden_act='gelu_new' is not supported"):
        hf_vit.read_config(str(tmp_path))


# --- Hugging Face ResNet -------------------------------------------------------------------------------

HF_RESNETS = {
    # name: (transformers.ResNetConfig kwargs, safetensors?, image size)
    "bottleneck50": (dict(embedding_size=8, hidden_sizes=[32, 64, 128, 256], depths=[3, 4, 6, 3]), True, 64),
    "basic18_bin": (dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2],
                         layer_type="basic"), False, 64),
    "bottleneck50_v1": (dict(embedding_size=8, hidden_sizes=[32, 64, 128, 256], depths=[3, 4, 6, 3],
                             downsample_in_bottleneck=True), True, 64),
}


# stride_in_1x1 is also covered by the Keras ResNet50 test; this one compiles two ResNet-50s.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "bottleneck50_v1" else n
                                  for n in HF_RESNETS])
def test_resnet_matches_transformers(name, tmp_path):
    kwargs, safe, size = HF_RESNETS[name]
    torch.manual_seed(0)
    reference = transformers.ResNetForImageClassification(transformers.ResNetConfig(**kwargs, num_labels=5)).eval()
    _perturb_torch(reference, image_size=size)
    reference.save_pretrained(tmp_path, safe_serialization=safe)
    values = hf_resnet.read_config(str(tmp_path))
    assert values["stride_in_1x1"] == kwargs.get("downsample_in_bottleneck", False)
    assert (values["depth"], values["width"], values["num_classes"]) == ((18 if "basic" in name else 50), 8, 5)
    model = _abstract(resnet.ResNet, resnet.ResNetConfig(**values))
    params, batch_stats, report = hf_resnet.load(str(tmp_path), *_templates(model))
    assert report["new"] == [] and report["unused"] == []
    images = _images(size)
    expected = _torch_logits(reference, images)
    difference = _max_difference(_merge(model, params, batch_stats), images, expected)
    assert difference <= TOLERANCE, difference
    if values["stride_in_1x1"]:  # The stride's place is no weight: the same weights in a v1.5 model differ.
        v15 = _abstract(resnet.ResNet, resnet.ResNetConfig(**dict(values, stride_in_1x1=False)))
        assert _max_difference(_merge(v15, params, batch_stats), images, expected) > 1e-2


# --- Keras applications --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


def _perturb_keras(model, seed: int = 0) -> None:
    """As `_perturb_torch`: weights moved, BatchNorm moving statistics calibrated on random images, then moved
    (0.1 added to each variance)."""
    rng = np.random.default_rng(seed)
    for weight in model.trainable_weights:
        value = weight.numpy()
        scale = 0.2 * value.std() if value.std() > 0 else 0.05  # relative for kernels and scales, else absolute
        weight.assign((value + scale * rng.normal(size=value.shape)).astype(np.float32))
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    if not norms:
        return
    for layer in norms:
        layer.momentum = 0.0
    model(rng.normal(size=(32, *model.input_shape[1:])).astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = 0.99
        std = np.sqrt(layer.moving_variance.numpy())
        mean = layer.moving_mean.numpy() + 0.1 * std * rng.normal(size=std.shape)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign((std**2 * (0.8 + 0.4 * rng.random(std.shape)) + 0.1).astype(np.float32))


def _keras_outputs(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False))


@pytest.fixture(scope="module")
def keras_resnet50(keras, tmp_path_factory):
    """ResNet50 (v1) at 32x32 with 5 classes and logits out, saved as .weights.h5, .keras and legacy .h5."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=5, classifier_activation=None)
    _perturb_keras(model)
    path = tmp_path_factory.mktemp("keras_resnet50")
    model.save_weights(path / "resnet50.weights.h5")
    model.save(path / "resnet50.keras")
    model.save(path / "resnet50.h5")
    images = _images(32)
    return path, images, _keras_outputs(model, images[..., ::-1]), _keras_outputs(model, images)


def test_keras_resnet50_matches(keras_resnet50):
    path, images, expected_rgb, expected_bgr = keras_resnet50
    file = str(path / "resnet50.weights.h5")
    values = keras_apps.read_config(file)
    assert values == {"name": "resnet", "depth": 50, "variant": "imagenet", "width": 64, "stride_in_1x1": True,
                      "conv_bias": True, "norm_epsilon": 1.001e-5, "num_classes": 5}
    values.pop("name")
    model = _abstract(resnet.ResNet, resnet.ResNetConfig(**values))
    params, batch_stats, report = keras_apps.load(file, *_templates(model))
    assert report["new"] == [] and report["unused"] == []
    assert report["notes"] == ["stem/conv/kernel: input channels reversed (Keras' BGR inputs -> RGB)"]
    ours = _merge(model, params, batch_stats)
    difference = _max_difference(ours, images, expected_rgb)
    assert difference <= TOLERANCE, difference
    bgr_params, _, _ = keras_apps.load(file, *_templates(model), input_order="bgr")
    difference = _max_difference(_merge(model, bgr_params, batch_stats), images, expected_bgr)
    assert difference <= TOLERANCE, difference


def test_keras_formats_agree(keras_resnet50):
    """.keras (with and without layer names in the weights file) and legacy .h5 read the same arrays."""
    path, *_ = keras_resnet50
    reference = keras_apps.read_layers(str(path / "resnet50.weights.h5"))
    assert len(reference) == 53 + 53 + 1  # convolutions, BatchNorms, predictions
    for name in ("resnet50.keras", "resnet50.h5"):
        layers = keras_apps.read_layers(str(path / name))
        assert sorted(layers) == sorted(reference), name
        for layer, variables in reference.items():
            for var, value in variables.items():
                np.testing.assert_array_equal(layers[layer][var], value, err_msg=f"{name} {layer}/{var}")
    # Older Keras 3 weights files carry no layer names: the .keras config.json supplies them.
    unnamed = path / "unnamed.keras"
    with zipfile.ZipFile(path / "resnet50.keras") as source, zipfile.ZipFile(unnamed, "w") as target:
        for item in source.namelist():
            target.writestr(item, source.read(item))
    with zipfile.ZipFile(unnamed) as archive:
        weights = archive.read("model.weights.h5")
    stripped = path / "stripped.weights.h5"
    stripped.write_bytes(weights)
    with h5py.File(stripped, "r+") as file:
        for group in file["layers"].values():
            if "vars" in group and "name" in group["vars"].attrs:
                del group["vars"].attrs["name"]
    with pytest.raises(ValueError, match="does not name its layers"):
        keras_apps.read_layers(str(stripped))
    with zipfile.ZipFile(path / "resnet50.keras") as source, zipfile.ZipFile(unnamed, "w") as target:
        for item in source.namelist():
            target.writestr(item, stripped.read_bytes() if item == "model.weights.h5" else source.read(item))
    layers = keras_apps.read_layers(str(unnamed))
    np.testing.assert_array_equal(layers["conv4_block6_2_conv"]["kernel"], reference["conv4_block6_2_conv"]["kernel"])
    np.testing.assert_array_equal(layers["conv2_block1_0_bn"]["moving_variance"],
                                  reference["conv2_block1_0_bn"]["moving_variance"])


def test_keras_resnet50_needs_v1_options(keras_resnet50):
    """Into our default (v1.5, bias-free) ResNet-50 the file does not fit: the error names our path."""
    path, *_ = keras_resnet50
    model = _abstract(resnet.ResNet, resnet.ResNetConfig(depth=50, num_classes=5))
    with pytest.raises(ValueError, match=r"weights for 53 ResNet parameters our model lacks.*conv1/bias"):
        keras_apps.load(str(path / "resnet50.weights.h5"), *_templates(model))


def test_keras_vgg16_matches(keras, tmp_path):
    keras.utils.set_random_seed(0)
    reference = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=5, classifier_activation=None)
    _perturb_keras(reference)
    file = str(tmp_path / "vgg16.weights.h5")
    reference.save_weights(file)
    values = keras_apps.read_config(file)
    assert values == {"name": "vgg", "depth": 16, "batch_norm": False, "classifier_width": 4096, "pool_size": 2,
                      "num_classes": 5}
    values.pop("name")
    model = _abstract(vgg.VGG, vgg.VGGConfig(**values, dropout_rate=0.0))
    params, batch_stats, report = keras_apps.load(file, _templates(model)[0])
    assert batch_stats is None and report["new"] == [] and report["unused"] == []
    images = _images(64)
    difference = _max_difference(_merge(model, params), images, _keras_outputs(reference, images[..., ::-1]))
    assert difference <= TOLERANCE, difference


def test_keras_vgg19_without_top_legacy_h5(keras, tmp_path):
    """VGG19 features only (include_top=False), in the Keras 2 `save_weights` HDF5 layout of the published
    application weights; kernels kept as stored (input_order='bgr'); our classifier stays fresh."""
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(1)
    reference = keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3))
    _perturb_keras(reference, seed=1)
    file = str(tmp_path / "vgg19_notop.h5")
    with h5py.File(file, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    assert keras_apps.read_config(file) == {"name": "vgg", "depth": 19, "batch_norm": False}
    model = _abstract(vgg.VGG, vgg.VGGConfig(depth=19, num_classes=3, pool_size=1, classifier_width=16))
    template = _templates(model)[0]
    params, _, report = keras_apps.load(file, template, input_order="bgr")
    assert sorted(report["new"]) == [f"{layer}/{var}" for layer in ("fc1", "fc2", "head") for var in ("bias", "kernel")]
    assert "no top" in report["notes"][0] and report["unused"] == []
    assert params["head"]["kernel"] is template["head"]["kernel"]  # kept as it was
    ours = _merge(model, params)
    images = _images(32)
    features = np.asarray(nnx.jit(lambda m, x: m.features(x, deterministic=True))(ours, images))
    expected = _keras_outputs(reference, images).reshape(2, -1)
    difference = float(np.abs(features - expected).max())
    assert difference <= TOLERANCE, difference


# --- config.init_from dispatch -------------------------------------------------------------------------

def _vision_config(name: str, init_from: str, **model) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.init_from = init_from
    config.model = vision_model_config(name, **model)
    config.data = ml_collections.ConfigDict({"mean": (), "std": ()})
    return config


def test_init_from_dispatch(hf_vit_classifier, keras_resnet50, tmp_path):
    vit_path, _ = hf_vit_classifier
    config = _vision_config("vit", str(vit_path), variant="B", patch_size=32, image_size=32, num_classes=5)
    pretrained.apply_to_config(config)
    assert (config.model.variant, config.model.patch_size, config.model.image_size) == (TINY_VIT, 16, 32)
    abstract = _abstract(vit.VisionTransformer, vit.ViTConfig(variant=TINY_VIT, image_size=32, num_classes=5))
    params, batch_stats, report = pretrained.load_into(config, _templates(abstract)[0], {})
    assert batch_stats is None and report["new"] == [] and len(report["loaded"]) == 8 + 3 * 16

    keras_path, *_ = keras_resnet50
    config = _vision_config("resnet", str(keras_path / "resnet50.keras"), depth=18, variant="cifar", num_classes=5)
    assert (config.model.stride_in_1x1, config.model.conv_bias) == (False, False)  # v1.5 by default
    pretrained.apply_to_config(config)
    assert (config.model.depth, config.model.variant, config.model.stride_in_1x1, config.model.conv_bias) == (
        50, "imagenet", True, True)
    assert config.data.mean == keras_apps.CAFFE_MEAN and config.data.std == keras_apps.CAFFE_STD
    model = _abstract(resnet.ResNet, resnet.ResNetConfig(depth=50, num_classes=5, stride_in_1x1=True,
                                                         conv_bias=True, norm_epsilon=1.001e-5))
    params, batch_stats, report = pretrained.load_into(config, *_templates(model))
    assert batch_stats["stem"]["norm"]["var"].shape == (64,) and report["new"] == []

    config = _vision_config("vgg", str(keras_path / "resnet50.weights.h5"))
    with pytest.raises(ValueError, match="is a Keras application resnet checkpoint but config.model.name='vgg'"):
        pretrained.apply_to_config(config)
    config = _vision_config("resnet", str(vit_path))  # A format the family does not load: the family's entry says.
    with pytest.raises(ValueError, match=r"is a hf_vit checkpoint; .* Families that load hf_vit: \['vit'\]"):
        pretrained.apply_to_config(config)


def test_init_from_workdir_brings_batch_stats(tmp_path):
    """A workdir of ours: parameters and BatchNorm statistics load where names and shapes match."""
    from lm import checkpointing

    params = {"stem": {"norm": {"scale": np.full(4, 2.0, np.float32)}}, "head": {"kernel": np.ones((4, 3), np.float32)}}
    stats = {"stem": {"norm": {"mean": np.full(4, 0.5, np.float32), "var": np.full(4, 3.0, np.float32)}}}
    checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(tmp_path)), async_save=False)
    checkpointer.save(1, {"params": params, "batch_stats": stats, "step": np.int32(1)}, {"note": "test"})
    checkpointer.close()
    (tmp_path / "config.json").write_text(json.dumps({"task": "classification",
                                                      "model": {"name": "resnet", "depth": 18, "width": 4}}))
    config = _vision_config("resnet", str(tmp_path), depth=50, num_classes=5)
    pretrained.apply_to_config(config)
    assert (config.model.depth, config.model.width) == (18, 4)
    ours = {"stem": {"norm": {"scale": np.ones(4, np.float32)}}, "head": {"kernel": np.zeros((4, 5), np.float32)}}
    our_stats = {"stem": {"norm": {"mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32)}}}
    new, new_stats, report = pretrained.load_into(config, ours, our_stats)
    np.testing.assert_array_equal(new["stem"]["norm"]["scale"], 2.0)
    np.testing.assert_array_equal(new["head"]["kernel"], 0.0)
    np.testing.assert_array_equal(new_stats["stem"]["norm"]["var"], 3.0)
    assert report["new"] == ["head/kernel"] and report["dropped"] == ["head/kernel"]
    assert report["loaded"] == ["stem/norm/scale", "batch_stats/stem/norm/mean", "batch_stats/stem/norm/var"]


def test_init_from_a_workdir_of_another_model_is_refused(tmp_path):
    """A workdir of another family (nothing would fit: a from-scratch run that looks like fine-tuning), or one
    whose weights match no parameter by name and shape, stops with the reason instead of training from scratch."""
    from lm import checkpointing

    checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(tmp_path)), async_save=False)
    checkpointer.save(1, {"params": {"encoder": {"kernel": np.ones((4, 4), np.float32)}}, "step": np.int32(1)}, {})
    checkpointer.close()
    (tmp_path / "config.json").write_text(json.dumps({"task": "classification", "model": {"name": "bert"}}))
    config = _vision_config("resnet", str(tmp_path), depth=18, num_classes=5)
    with pytest.raises(ValueError, match=r"is a workdir of a 'bert' model, but config.model.name='resnet'"):
        pretrained.apply_to_config(config)
    (tmp_path / "config.json").write_text(json.dumps({"task": "classification", "model": {"name": "resnet"}}))
    ours = {"stem": {"norm": {"scale": np.ones(4, np.float32)}}, "head": {"kernel": np.zeros((4, 5), np.float32)}}
    with pytest.raises(ValueError, match=r"none of its step-1 weights matches a parameter of this model"):
        pretrained.load_into(config, ours, None)
