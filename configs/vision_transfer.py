"""Transfer: an ImageNet-pretrained ResNet, VGG or ViT fine-tuned (or linearly probed) on a smaller set.

Usage (the weights come from `init_from`: a Hugging Face directory such as microsoft/resnet-50 or
google/vit-base-patch16-224-in21k, a Keras `.weights.h5`/`.keras`/`.h5` of keras.applications VGG16/VGG19/
ResNet50, or a workdir of ours; the head is made fresh for the new classes):
  python main.py --config=configs/vision_transfer.py:vit_b16,oxford_iiit_pet --workdir=/tmp/pets \
      --config.init_from=/models/vit-base-patch16-224-in21k
  python main.py --config=configs/vision_transfer.py:resnet50,folder --workdir=/tmp/mine \
      --config.init_from=/models/resnet-50 --config.data.train_dir=/data/my_images --config.model.num_classes=5
  ... --config.trainable=head         # linear probe: only the head trains, the backbone is frozen
  ... --config.optimizer.layer_decay=0.75   # layer-wise learning-rate decay (ViT)

Arguments: a model (resnet50, vgg16, vgg19, vit_b16, vit_s16), a data set (oxford_iiit_pet,
oxford_flowers102, folder) and `smoke`.

Recipe: BiT-HyperRule style (Kolesnikov et al. 2020): SGD momentum 0.9, learning rate 0.003 x batch/512
(ResNet, VGG) or 0.01 for ViT with gradient clipping at 1 (Dosovitskiy et al. 2021), no weight decay,
cosine decay after a short warm-up, 224 px random-resized crops and flips, batch 64, 20 epochs.
Expected results (approximate, from the papers' fine-tuning tables; our runs will be added to the README
when measured on an accelerator):
  - vit_b16 from ImageNet-21k weights: about 94% on Oxford-IIIT Pets and about 99% on Oxford Flowers-102.
  - resnet50 from ImageNet-1k weights: about 92-93% on Pets and about 96-97% on Flowers
    (Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?").
  - A linear probe (`trainable=head`) trails full fine-tuning by several points on both.
"""

import ml_collections

from configs import vision_classification

MODELS = ("resnet50", "vgg16", "vgg19", "vit_b16", "vit_s16")
DATASETS = ("oxford_iiit_pet", "oxford_flowers102", "folder")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    from configs import common

    variant = common.parse_arg(arg, model=MODELS, dataset=DATASETS)
    words = [variant.model, variant.dataset] + (["smoke"] if variant.smoke else [])
    config = vision_classification.get_config(",".join(words))
    if variant.smoke:
        return config
    vit = variant.model.startswith("vit")
    config.global_batch_size = 64
    config.num_epochs = 20.0
    config.optimizer.update(
        name="sgd", momentum=0.9, nesterov=False, weight_decay=0.0, schedule="cosine", warmup_fraction=0.05,
        learning_rate=0.01 if vit else 0.003 * 64 / 512, clip_norm=1.0 if vit else 0.0,
    )
    config.data.mixup_alpha = 0.0
    config.label_smoothing = 0.0
    return config
