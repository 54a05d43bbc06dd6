"""ViT-B/16 trained from scratch on ImageNet-1k, 300 epochs: the DeiT recipe without distillation.

Paper: Touvron et al. 2021, "Training data-efficient image transformers & distillation through attention"
(DeiT): DeiT-B, a ViT-B/16 trained on ImageNet-1k alone at 224 px, reaches 81.8% top-1 on the validation set.
(Dosovitskiy et al. 2021 trained ViT-B/16 on ImageNet-1k with a weaker recipe and lower results; the ViT
paper's strong numbers need ImageNet-21k or JFT pretraining.)

Recipe (DeiT's, in our keys): batch 1024, AdamW lr 5e-4 x batch / 512 = 1e-3, weight decay 0.05, 5 warm-up
epochs then cosine, label smoothing 0.1, mixup 0.8, inception crops and flips, 300 epochs. What we lack:
CutMix, RandAugment, random erasing, repeated augmentation and stochastic depth 0.1; expect our run to land below
81.8 until those exist.

Hardware and time: DeiT-B's 300 epochs took 53 h on one node of 8 V100s (the paper); about a day on a TPU
v3-32 or 8 A100s (estimate).

  python main.py --config=configs/baselines/vit_b16_imagenet.py --workdir=gs://BUCKET/vit_b16 \
      --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
"""

import ml_collections

from configs import baselines, vision_classification


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, smoke = baselines.experiment(vision_classification.get_config, "vit_b16,imagenet2012", arg)
    config.baseline = baselines.baseline_section(
        "vit_b16_imagenet", smoke=smoke, paper=81.8, source="Touvron et al. 2021 (DeiT-B, 300 epochs)",
        hardware="8x V100", time="53 h (DeiT paper)",
        flags="--config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets",
    )
    return config
