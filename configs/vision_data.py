"""`config.data` section for image classification (input_pipeline/image_classification.py), with presets.

`image_data_config()` returns the keys with the offline default: scikit-learn's handwritten digits (1797
real 8x8 images, shipped with scikit-learn, no download) upsampled to 32x32. `image_data_config("cifar10")`
returns the section for a named dataset; `DATASET_NUM_CLASSES[name]` is what `config.model.num_classes`
must be for it (the pipeline checks).

Sources:
  tfds    a TFDS dataset by name: mnist, cifar10, cifar100, oxford_iiit_pet, oxford_flowers102,
          imagenet2012. Splits "auto" take the dataset's defaults (validation carved from train where the
          dataset has none); "" leaves a split out. imagenet2012 cannot be downloaded by TFDS: put
          ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from https://image-net.org) in a folder and
          set tfds_manual_dir to it.
  folder  train_dir holds one sub-folder per class (sorted names give the class ids) of JPEG/PNG files;
          validation_dir/test_dir likewise, or, when empty, validation/test are carved out of train_dir
          (per class, seeded by config.seed) by validation_fraction/test_fraction.
  digits  scikit-learn's load_digits, carved by validation_fraction/test_fraction.
  arrays  in-memory arrays: arrays_path is an .npz with x_train, y_train [, x_val, y_val, x_test, y_test,
          class_names]; or arrays_name names arrays given to
          `input_pipeline.sources.arrays.register_arrays(name, x_train, y_train, ...)` in the same
          process. Images uint8 in [0, 255] or float in [0, 1], [N, H, W] or [N, H, W, C]; labels integers.
          Splits missing from the arrays are carved out of train like the folder's.
"""

import ml_collections

_IMAGENET_STYLE = {"image_size": 224, "augmentation": "inception_crop", "flip": True}

# name: (num_classes, overrides of image_data_config()'s defaults); 0 classes: set by the user's data.
_PRESETS = {
    "digits": (10, {}),
    "mnist": (10, {"source": "tfds", "tfds_name": "mnist", "image_size": 28, "augmentation": "none"}),
    "cifar10": (10, {"source": "tfds", "tfds_name": "cifar10", "flip": True}),
    "cifar100": (100, {"source": "tfds", "tfds_name": "cifar100", "flip": True}),
    "oxford_iiit_pet": (37, {"source": "tfds", "tfds_name": "oxford_iiit_pet", **_IMAGENET_STYLE}),
    "oxford_flowers102": (102, {"source": "tfds", "tfds_name": "oxford_flowers102", **_IMAGENET_STYLE}),
    "imagenet2012": (1000, {"source": "tfds", "tfds_name": "imagenet2012", **_IMAGENET_STYLE}),
    "folder": (0, {"source": "folder", **_IMAGENET_STYLE}),
    "arrays": (0, {"source": "arrays"}),
}

DATASET_NUM_CLASSES = {name: num_classes for name, (num_classes, _) in _PRESETS.items() if num_classes}


def image_data_config(dataset: str = "digits") -> ml_collections.ConfigDict:
    """The `config.data` keys for image classification, preset for `dataset` (a key of _PRESETS)."""
    if dataset not in _PRESETS:
        raise ValueError(f"Unknown image dataset preset {dataset!r}; choose one of {sorted(_PRESETS)}.")
    data = ml_collections.ConfigDict()
    data.source = "digits"  # tfds | folder | digits | arrays | a source registered with register_source
    data.tfds_name = ""
    data.tfds_data_dir = ""  # "" = TFDS default (~/tensorflow_datasets).
    data.tfds_manual_dir = ""  # imagenet2012: the folder holding the ILSVRC2012 .tar files.
    data.train_split = "auto"  # TFDS split strings; "auto" = the dataset's default; "" = no such split.
    data.validation_split = "auto"
    data.test_split = "auto"
    data.train_dir = ""  # folder: one sub-folder of JPEG/PNG images per class.
    data.validation_dir = ""
    data.test_dir = ""
    data.validation_fraction = 0.15  # folder, digits, arrays: carved out of train when not given.
    data.test_fraction = 0.15
    data.arrays_path = ""  # arrays: an .npz file ...
    data.arrays_name = ""  # ... or the name given to register_arrays().
    data.image_size = 32  # the model's input side: images are H = W = image_size.
    data.channels = 0  # 1 | 3 | 0 = the dataset's own (1 for mnist and digits, 3 for colour).
    data.augmentation = "pad_crop"  # none | pad_crop (CIFAR style) | inception_crop (random-resized crop)
    data.pad = 4  # pad_crop: pixels of zero padding on each side before the random crop.
    data.flip = False  # random horizontal flips (off for digits: a mirrored digit is another shape).
    data.mixup_alpha = 0.0  # > 0: mixup with Beta(alpha, alpha); training batches gain 'label_probs'.
    # Evaluation (and augmentation 'none'): > 0 resizes the shorter side to eval_resize, then crops the
    # centre image_size square; 0 resizes straight to image_size; -1 = round(image_size / 0.875) for
    # photos (oxford_*, imagenet2012, folder) and 0 for small images (mnist, cifar, digits, arrays).
    data.eval_resize = -1
    data.mean = ()  # per-channel normalisation of [0, 1] pixels; () = the dataset's (ImageNet's for photos).
    data.std = ()
    data.shuffle_buffer = 10_000  # tfds only: the others permute the whole training set each epoch.
    data.views = 1  # 2: two augmented views of each image ('image', 'image_view2'), for SimCLR pretraining.
    data.color_distortion = 0.0  # > 0: SimCLR colour distortion of this strength (RGB only).
    data.update(_PRESETS[dataset][1])
    return data
