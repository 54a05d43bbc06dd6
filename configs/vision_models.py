"""`config.model` sections for the vision families of `lm.models` (resnet, vgg, vit), with defaults.

`vision_model_config("resnet", depth=18, variant="cifar", num_classes=10)` returns the section an
experiment config assigns to `config.model`; `create_model` reads every key. Defaults are the
ImageNet-1k models of the papers: ResNet-50, VGG-16 (no BatchNorm), ViT-B/16 at 224x224.
"""

import ml_collections

VISION_MODEL_DEFAULTS = {
    "resnet": {
        "depth": 50,  # 18 | 34 | 50 | 101 | 152
        "variant": "imagenet",  # imagenet: 7x7/2 conv + max-pool stem; cifar: 3x3/1 conv stem
        "num_classes": 1000,
        "width": 64,  # channels of the first stage (64 in the paper); smaller for smoke tests
        "zero_init_residual": True,  # last BatchNorm scale of each block starts at 0 (Goyal et al. 2017)
        "stride_in_1x1": False,  # True: stride on the first 1x1 conv (ResNet v1, Keras) instead of the 3x3 (v1.5)
        "conv_bias": False,  # True: biases on every conv (Keras ResNet50)
        "norm_epsilon": 1e-5,  # BatchNorm epsilon (Keras: 1.001e-5)
        "projection_dims": (),  # non-empty: SimCLR's projection MLP of these widths replaces the linear head
        "dtype": "float32",  # compute dtype; parameters and BatchNorm statistics stay float32
        "remat": "none",  # none | full | dots_saveable: recompute each residual block in the backward pass
    },
    "vgg": {
        "depth": 16,  # 11 | 13 | 16 | 19
        "batch_norm": False,
        "num_classes": 1000,
        "dropout_rate": 0.5,
        "pool_size": 7,  # adaptive average pool before the classifier; 1 = global pooling (small images)
        "classifier_width": 4096,
        "dtype": "float32",
        "remat": "none",  # none | full | dots_saveable: recompute each convolution block in the backward pass
    },
    "vit": {
        "variant": "B",  # Ti | S | B | L
        "patch_size": 16,  # 16 | 32
        "image_size": 224,
        "pooling": "cls",  # cls: class token; gap: global average pool of the tokens
        "num_classes": 1000,
        "dropout_rate": 0.1,  # the paper's ImageNet-1k setting; 0 for JFT-scale data
        "attention_dropout_rate": 0.0,
        "layer_norm_eps": 1e-6,  # Hugging Face ViT checkpoints use 1e-12
        "dtype": "float32",  # compute dtype; bfloat16 keeps softmax, LayerNorm statistics and the head float32
        "remat": "none",  # none | full | dots_saveable: recompute each encoder block in the backward pass
    },
}


def vision_model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """The `config.model` section for `name` with `overrides` applied; unknown names or keys raise."""
    if name not in VISION_MODEL_DEFAULTS:
        raise ValueError(f"Unknown vision model {name!r}; choose one of {sorted(VISION_MODEL_DEFAULTS)}.")
    defaults = VISION_MODEL_DEFAULTS[name]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown keys {unknown} for model {name!r}; known keys: {sorted(defaults)}.")
    return ml_collections.ConfigDict({"name": name, **defaults, **overrides})
