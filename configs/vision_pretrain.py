"""Self-supervised pretraining of a ResNet with SimCLR (Chen et al. 2020), then a linear probe of its features.

Usage:
  # 1. Pretrain without labels (two augmented views of each image, NT-Xent over the global batch):
  python main.py --config=configs/vision_pretrain.py:resnet18_cifar,cifar10 --workdir=/tmp/simclr
  # 2. Linear probe: a fresh linear head on the frozen pretrained backbone, trained with the labels (the
  #    projection head is dropped; the backbone's shape comes from the workdir):
  python main.py --config=configs/vision_classification.py:resnet18_cifar,cifar10 --workdir=/tmp/probe \
      --config.init_from=/tmp/simclr --config.trainable=head --config.optimizer.learning_rate=0.1
  # (or fine-tune all of it: leave out --config.trainable=head)

Arguments (comma-separated): a ResNet (resnet_small, resnet18_cifar, resnet18, resnet50), a data set (digits,
cifar10, cifar100, imagenet2012, folder, arrays; labels are not read during pretraining) and `smoke`.

Each view is a random-resized crop, a horizontal flip and SimCLR's colour distortion (random brightness,
contrast, saturation and hue with p=0.8, grayscale with p=0.2; `data.color_distortion` is its strength).
The projection head is Linear-BN-ReLU-Linear to 128 dimensions (`model.projection_dims`). Validation reports
the NT-Xent loss and the accuracy of finding each view's partner among the other views of its eval batch.

Recipe (Chen et al. 2020, "A simple framework for contrastive learning of visual representations"):
  - ImageNet, ResNet-50: LARS, learning rate 0.3 x batch/256 (4.8 at batch 4096), weight decay 1e-6, 10
    warm-up epochs then cosine, temperature 0.1, colour strength 1.0 with Gaussian blur, 1000 epochs on 128
    TPU v3 cores: 69.3% top-1 linear evaluation (76.5% for ResNet-50 4x); 100 epochs give 64.5%.
  - CIFAR-10, ResNet-50 with a 3x3 stem and no max-pool: batch 1024, 1000 epochs, temperature 0.5, colour
    strength 0.5, no blur: 94.0% linear evaluation.
This config follows those choices (LARS with momentum 0.9 and trust coefficient 0.001; biases and BatchNorm
parameters get neither weight decay nor the trust ratio, as in SimCLR) except Gaussian blur. The `smoke`
variant runs a few steps of a tiny ResNet on scikit-learn's digits.
"""

import ml_collections

from configs import common, vision_classification

MODELS = ("resnet18_cifar", "resnet_small", "resnet18", "resnet50")
DATASETS = ("cifar10", "digits", "cifar100", "imagenet2012", "folder", "arrays")


def _feature_width(model: ml_collections.ConfigDict) -> int:
    """Channels of the pooled features: the last stage's, x4 for bottleneck ResNets."""
    return model.width * 8 * (4 if model.depth >= 50 else 1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = common.parse_arg(arg, model=MODELS, dataset=DATASETS)
    words = [variant.model, variant.dataset] + (["smoke"] if variant.smoke else [])
    config = vision_classification.get_config(",".join(words))
    config.task = "simclr"
    imagenet = variant.dataset == "imagenet2012"
    config.temperature = 0.1 if imagenet else 0.5
    config.model.projection_dims = (_feature_width(config.model), 128)
    config.data.views = 2
    config.data.color_distortion = 1.0 if imagenet else 0.5
    config.data.augmentation = "inception_crop"
    config.data.flip = True
    config.data.mixup_alpha = 0.0
    config.label_smoothing = 0.0
    config.best_metric = "loss"
    config.best_mode = "min"
    config.eval_splits_at_end = ("validation",)
    config.eval_split = "validation"

    batch = 4096 if imagenet else 1024
    config.global_batch_size = batch
    config.num_epochs = 1000.0
    config.optimizer.update(name="lars", learning_rate=0.3 * batch / 256, momentum=0.9, nesterov=False,
                            trust_coefficient=0.001, weight_decay=1e-6, schedule="cosine", warmup_fraction=10 / 1000,
                            clip_norm=0.0)
    if variant.dataset in ("digits", "arrays", "folder"):  # Small data sets: a small batch and fewer epochs.
        config.global_batch_size = 256
        config.num_epochs = 100.0
        config.optimizer.learning_rate = 0.3

    if variant.smoke:
        config.model.projection_dims = (_feature_width(config.model), 16)
        config.global_batch_size = 16
        config.num_train_steps = 4
        config.optimizer.learning_rate = 0.05
    return config
