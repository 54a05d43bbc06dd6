"""config.data.source='tfds': a TensorFlow Datasets dataset, streamed (not held in memory nor counted by reading).

`tfds.even_splits` gives each host a fixed, disjoint slice of each split (`config.data.<split>_split`, a TFDS
split string such as "train[:90%]"; "" leaves the split out); split sizes come from the dataset's metadata
(without it, as under `tfds.testing.mock_data`, from reading). Every dataset is built (`as_dataset`) here, once:
under `tfds.testing.mock_data` `as_dataset` patches the file system of the whole process while it runs.

Fields: "text" and "label" are the features `config.data.text_field` and `config.data.label_field`. Images come
from the known datasets of `IMAGE_DATASETS` (their image and label features, default splits for "auto",
normalisation), still encoded: the image pipeline decodes them after shuffling. A dataset not yet on disk is
downloaded and prepared first, as `tfds.load` does; for multi-host runs prepare it beforehand
(`tfds build NAME --data_dir=...`).
"""

import dataclasses

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline.augment import PHOTOS, Defaults
from input_pipeline.common import SPLITS
from input_pipeline.registry import register_source
from input_pipeline.source import Request, Streamed

FIELD_KEYS = {"text": "text_field", "label": "label_field"}
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


@dataclasses.dataclass(frozen=True)
class TfdsImages:
    """A known TFDS image classification dataset: classes, default (train, validation, test) splits."""

    num_classes: int
    splits: tuple[str, str, str]
    defaults: Defaults
    image_key: str = "image"
    label_key: str = "label"
    manual_download: bool = False


IMAGE_DATASETS = {
    "mnist": TfdsImages(10, ("train[:90%]", "train[90%:]", "test"), Defaults(1, (0.1307,), (0.3081,), False)),
    "cifar10": TfdsImages(
        10, ("train[:90%]", "train[90%:]", "test"),
        Defaults(3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), False),
    ),
    "cifar100": TfdsImages(
        100, ("train[:90%]", "train[90%:]", "test"),
        Defaults(3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), False),
    ),
    "oxford_iiit_pet": TfdsImages(37, ("train[:90%]", "train[90%:]", "test"), PHOTOS),
    "oxford_flowers102": TfdsImages(102, ("train", "validation", "test"), PHOTOS),
    # ImageNet's validation set is the usual test set; a 1% minival is carved from train (as big_vision).
    "imagenet2012": TfdsImages(1000, ("train[:99%]", "train[99%:]", "validation"), PHOTOS, manual_download=True),
}


def check(config: ml_collections.ConfigDict, fields: tuple[str, ...]) -> None:
    if "image" in fields and config.data.tfds_name not in IMAGE_DATASETS:
        raise ValueError(
            f"config.data.tfds_name={config.data.tfds_name!r} is not a known image dataset; known: "
            f"{sorted(IMAGE_DATASETS)}. For your own images use config.data.source='folder' or 'arrays'."
        )


@register_source("tfds", check=check, streaming=True)
def load(request: Request) -> Streamed:
    data = request.config.data
    spec = IMAGE_DATASETS[data.tfds_name] if "image" in request.fields else None
    builder = prepared_builder(data, spec)
    names = feature_names(builder, request.fields, data, spec)
    skip = {names["image"]: tfds.decode.SkipDecoding()} if "image" in names else {}
    decoders = tfds.decode.PartialDecoding({name: True for name in names.values()}, decoders=skip)
    defaults = dict(zip(SPLITS, spec.splits, strict=True)) if spec else {}
    loaded = Streamed(description=f"TFDS {data.tfds_name!r}", class_names=_class_names(builder, names))
    if spec is not None:
        loaded.info.update(image_format="encoded", image_defaults=spec.defaults)
    hosts = range(request.process_count) if request.every_host else [request.process_index]
    for split in request.splits:
        value = data[f"{split}_split"]
        tfds_split = defaults.get(split, "") if value == "auto" else value
        if not tfds_split:
            continue
        key = f"config.data.{split}_split={value!r}" + (f" ({tfds_split!r})" if value == "auto" else "")
        host_splits = tfds.even_splits(tfds_split, n=request.process_count)
        try:
            raw = {h: builder.as_dataset(split=host_splits[h], decoders=decoders, shuffle_files=False) for h in hosts}
            loaded.counts[split] = _split_sizes(builder, host_splits, raw)
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"{key} is not a valid split of {builder.name}: {key} is not a split of {builder.name} or a slice "
                f"of one (splits: {list(builder.info.splits)}; e.g. 'train[:90%]'). TFDS: {e}"
            ) from e
        loaded.datasets[split] = {h: ds.map(lambda ex: {f: ex[n] for f, n in names.items()}) for h, ds in raw.items()}
    return loaded


def prepared_builder(data: ml_collections.ConfigDict, spec: TfdsImages | None) -> tfds.core.DatasetBuilder:
    try:
        builder = tfds.builder(data.tfds_name, data_dir=data.tfds_data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"config.data.tfds_name={data.tfds_name!r} is not a TFDS dataset ({str(e).splitlines()[0]}). Use a "
            "name from `tfds.list_builders()` such as 'imdb_reviews' or 'lm1b', or another config.data.source."
        ) from e
    if builder.is_prepared():
        return builder
    if spec is not None and spec.manual_download:
        _check_manual_dir(data, builder.data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data.tfds_manual_dir or None))
    return builder


def feature_names(builder: tfds.core.DatasetBuilder, fields: tuple[str, ...], data: ml_collections.ConfigDict,
                  spec: TfdsImages | None) -> dict[str, str]:
    """Example field -> the dataset's feature, checked against the dataset's features."""
    if spec is not None:
        return {"image": spec.image_key, "label": spec.label_key}
    features = builder.info.features
    names = {field: data[FIELD_KEYS[field]] for field in fields}
    for field, name in names.items():
        if name not in features:
            raise ValueError(
                f"config.data.{FIELD_KEYS[field]}={name!r} is not a feature of {builder.name}; features: "
                f"{list(features)}."
            )
    if "text" in names and features[names["text"]].tf_dtype != tf.string:
        raise ValueError(f"config.data.text_field={names['text']!r} of {builder.name} is not a text feature.")
    return names


def _class_names(builder: tfds.core.DatasetBuilder, names: dict[str, str]) -> list[str] | None:
    label = builder.info.features[names["label"]] if "label" in names else None
    return list(label.names) if isinstance(label, tfds.features.ClassLabel) else None


def _split_sizes(builder: tfds.core.DatasetBuilder, host_splits: list, built: dict[int, tf.data.Dataset]) -> list[int]:
    """Examples in each host's split: from the metadata; without it (mock data), by cardinality or reading."""
    if builder.info.splits:
        return [builder.info.splits[s].num_examples for s in host_splits]
    sizes = []
    for host, host_split in enumerate(host_splits):
        ds = built[host] if host in built else builder.as_dataset(split=host_split, shuffle_files=False)
        count = int(ds.cardinality())
        sizes.append(count if count >= 0 else int(ds.reduce(np.int64(0), lambda n, _: n + 1)))
    return sizes


def _check_manual_dir(data: ml_collections.ConfigDict, data_dir: str) -> None:
    manual_dir = data.tfds_manual_dir
    missing = [f for f in IMAGENET_MANUAL_FILES if not manual_dir or not tf.io.gfile.exists(f"{manual_dir}/{f}")]
    if missing:
        raise ValueError(
            f"config.data.tfds_name={data.tfds_name!r} is not prepared in {data_dir} and TFDS cannot "
            "download it: it needs your manual download dir, "
            f"config.data.tfds_manual_dir={manual_dir!r}, which lacks {missing}. Get "
            f"{' and '.join(IMAGENET_MANUAL_FILES)} from https://image-net.org/download-images (free "
            "registration), put them in one folder and set config.data.tfds_manual_dir to it; or set "
            "config.data.tfds_data_dir to where imagenet2012 is already prepared."
        )
