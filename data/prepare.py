"""Writes the measured runs' data in the formats the pipelines read: `python data/prepare.py [OUT_DIR]`.

OUT_DIR (default /tmp/lm_data) receives
  sst2/train.tsv, sst2/dev.tsv, sst2/test.tsv   from sst2/stsa.binary.*: a `label<TAB>sentence` header, then one
                                                 sentence a line (whitespace runs become single spaces)
  mnist_t10k.npz                                from mnist_t10k/: x_train, y_train = the first 8,000 images,
                                                 x_test, y_test = the last 2,000 (uint8 [N, 28, 28], int labels)
configs/baselines/minilm_sst2.py and resnet_small_mnist.py read them from there.
"""

import gzip
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def write_sst2(out_dir: str) -> None:
    os.makedirs(os.path.join(out_dir, "sst2"), exist_ok=True)
    for split in ("train", "dev", "test"):
        with open(os.path.join(HERE, "sst2", f"stsa.binary.{split}"), encoding="utf-8") as f:
            rows = [line.split() for line in f if line.strip()]
        with open(os.path.join(out_dir, "sst2", f"{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("label\tsentence\n")
            f.writelines(f"{fields[0]}\t{' '.join(fields[1:])}\n" for fields in rows)


def read_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST's format: magic, dimension sizes, then uint8 data), gzip-compressed."""
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_mnist(out_dir: str) -> None:
    images = read_idx(os.path.join(HERE, "mnist_t10k", "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(HERE, "mnist_t10k", "t10k-labels-idx1-ubyte.gz"))
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, "mnist_t10k.npz"), x_train=images[:8000], y_train=labels[:8000],
             x_test=images[8000:], y_test=labels[8000:])


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lm_data"
    write_sst2(target)
    write_mnist(target)
    print(f"wrote {target}/sst2/{{train,dev,test}}.tsv and {target}/mnist_t10k.npz")
