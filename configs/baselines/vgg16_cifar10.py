"""VGG-16 with BatchNorm trained from scratch on CIFAR-10.

Paper: Li et al. 2017, "Pruning Filters for Efficient ConvNets", Table 1: their unpruned VGG-16 for CIFAR-10
(VGG-16's 13 convolutions, each followed by BatchNorm, then a small classifier) has 6.75% test error (93.25%
accuracy). Simonyan and Zisserman 2015 report ImageNet only.

Recipe: our VGG-16 with BatchNorm, global average pooling to 512 features, a classifier of two 512-unit
layers with dropout 0.5; batch 128, SGD momentum 0.9, lr 0.1, weight decay 5e-4, 200 epochs cosine,
4-pixel pad-and-crop and flips (train 45,000 / validate 5,000).

Hardware and time (estimate, not run here): 70,000 steps of 0.31 G multiply-adds per
image: about an hour on one A100, 2-3 h on one V100.

  python main.py --config=configs/baselines/vgg16_cifar10.py --workdir=WORKDIR
"""

import ml_collections

from configs import baselines, vision_classification


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, smoke = baselines.experiment(vision_classification.get_config, "vgg16_bn,cifar10", arg)
    if not smoke:
        config.model.classifier_width = 512
    config.baseline = baselines.baseline_section(
        "vgg16_cifar10", smoke=smoke, paper=93.25, source="Li et al. 2017, Table 1 (VGG-16 with BatchNorm)",
        hardware="1 GPU (A100 or V100)", time="1-3 h (estimate)",
    )
    return config
