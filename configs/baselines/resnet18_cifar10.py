"""ResNet-18 (3x3 stem, no max-pool: the CIFAR layout) trained from scratch on CIFAR-10.

Paper: DeVries and Taylor 2017, "Improved Regularization of Convolutional Neural Networks with Cutout": ResNet-18
without cutout has 4.72% test error on CIFAR-10 (95.28% accuracy; mean of 5 runs, crop + flip augmentation).
(He et al. 2016 report CIFAR-10 for their thinner CIFAR ResNets only, e.g. 6.43% error for ResNet-110.)

Recipe (theirs, with a cosine instead of a step decay): batch 128, SGD momentum 0.9, lr 0.1, weight decay 5e-4,
200 epochs, 4-pixel pad-and-crop and flips. We train on 45,000 images and validate on 5,000 (theirs: all 50,000).

Hardware and time (estimate, not run here): 70,000 steps of 0.56 G multiply-adds per image: about an hour on one A100,
2-3 h on one V100.

  python main.py --config=configs/baselines/resnet18_cifar10.py --workdir=WORKDIR
"""

import ml_collections

from configs import baselines, vision_classification


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, smoke = baselines.experiment(vision_classification.get_config, "resnet18_cifar,cifar10", arg)
    config.baseline = baselines.baseline_section(
        "resnet18_cifar10", smoke=smoke, paper=95.28, source="DeVries & Taylor 2017 (mean of 5 runs)",
        hardware="1 GPU (A100 or V100)", time="1-3 h (estimate)",
    )
    return config
