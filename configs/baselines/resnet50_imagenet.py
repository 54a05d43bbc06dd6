"""ResNet-50 trained from scratch on ImageNet-1k (ILSVRC-2012), evaluated on its 50,000 validation images.

Paper: He et al. 2016, "Deep Residual Learning for Image Recognition". The authors' released ResNet-50 has
24.7% top-1 error with a single 224 px centre crop (75.3% top-1; github.com/KaimingHe/deep-residual-networks);
the paper's Table 3 gives 22.85% with 10-crop testing. We evaluate one centre crop (resize to 256, crop 224),
so 75.3 is the number to compare with. ImageNet's validation set is our `test` split; 1% of the training set
validates (big_vision's minival).

Recipe (Goyal et al. 2017, "Accurate, Large Minibatch SGD", with a cosine instead of a step decay): batch 1024,
SGD Nesterov momentum 0.9, lr 0.1 x batch / 256 = 0.4 after 5 warm-up epochs, weight decay 1e-4, label
smoothing 0.1, 90 epochs, random-resized (inception) crops and flips, zero-initialised last BatchNorm scale
of each block. This is the ResNet-50 "v1.5" (stride on the 3x3 convolution).

Hardware and time (estimate, not run here): 90 epochs are about 1.4e18 FLOPs, about what big_vision's
ViT-S/16 takes in 90 epochs (6-7 h on a TPU v3-8): plan 7-9 h on a TPU v3-8 or 8 V100s, half that on 8 A100s.
ImageNet needs its manual download (see docs/LAUNCH.md).

  python main.py --config=configs/baselines/resnet50_imagenet.py --workdir=gs://BUCKET/resnet50 \
      --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
"""

import ml_collections

from configs import baselines, vision_classification


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, smoke = baselines.experiment(vision_classification.get_config, "resnet50,imagenet2012", arg)
    config.baseline = baselines.baseline_section(
        "resnet50_imagenet", smoke=smoke, paper=75.3, source="He et al. 2016 (released model, 1 crop; 10-crop: 77.15)",
        hardware="TPU v3-8 or 8x V100", time="7-9 h (estimate)",
        flags="--config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets",
    )
    return config
