"""A small ResNet trained from scratch on MNIST's 10,000 test images on a 2-core CPU: the README's measured run.

Data: data/mnist_t10k (the official MNIST test set), written by `python data/prepare.py` as
/tmp/lm_data/mnist_t10k.npz: the first 8,000 images train (10% of them validate), the last 2,000 test.
(--config.data.arrays_path to read it elsewhere.) Model: ResNet-18's CIFAR layout at width 16 (0.7M
parameters) on 28x28 images. Recipe: the from-scratch recipe of configs/vision_classification.py (AdamW 2e-3,
2% warm-up then cosine, weight decay 1e-4), batch 64, 10 epochs, 4-pixel pad-and-crop.

No paper trains on these 8,000 images (LeCun et al. 1998 and later work train on MNIST's 60,000); the number to
beat is our own measured one: 99.20% on the last 2,000 images (best validation 99.12%), 4.1 min on a 2-core
CPU (README "Measured runs").

  python data/prepare.py && python main.py --config=configs/baselines/resnet_small_mnist.py --workdir=WORKDIR
"""

import ml_collections

from configs import baselines, vision_classification

ARRAYS_PATH = "/tmp/lm_data/mnist_t10k.npz"  # where `python data/prepare.py` writes the arrays


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, smoke = baselines.experiment(vision_classification.get_config, "resnet_small,arrays", arg)
    config.data.arrays_path = ARRAYS_PATH
    config.model.num_classes = 10
    if not smoke:
        config.data.image_size = 28
        config.data.validation_fraction = 0.1
        config.data.test_fraction = 0.0
        config.num_epochs = 10.0
    config.baseline = baselines.baseline_section(
        "resnet_small_mnist", smoke=smoke, paper=-1, source="no paper on this 8,000-image split",
        hardware="2-core CPU", time="4 min (measured)", prepare="python data/prepare.py",
    )
    return config
