"""Our jitted ResNet train step against Keras 3 (TensorFlow, XLA) and PyTorch eager: same model, batch, size.

Two cases, each a model and data section of configs/vision_classification.py with its optimizer (SGD
momentum 0.9 with weight decay; Nesterov and label smoothing as the recipe says; the learning rate scaled
linearly to the batch, no warm-up):
  resnet50         ResNet-50 v1.5 at 224x224, 1000 classes, batch 16 by default
  resnet18_cifar   ResNet-18 with the CIFAR stem (one 3x3/1 convolution, no max-pool) at 32x32, 10 classes,
                   batch 128 by default
The contenders train on the same random NHWC float32 batch and random labels, BatchNorm in train mode
(batch statistics, running averages updated):
  ours    lm.train.jit_train_step on a 1-device mesh, built as the trainer builds it (state donated)
  ours_xla_default  the same with config.xla_cpu_ynn_fusions="xla_default": XLA:CPU's own choice of what
          YNNPACK runs (convolutions included) instead of ours (lm/compiler.py); not run by default
  keras   Keras 3 on the TensorFlow backend, `compile(jit_compile=True)` and `train_on_batch`.
          resnet50: `keras.applications.ResNet50(weights=None)`, which is ResNet v1 (stride on the first
          1x1 convolution of a block, convolutions with biases): about 5% fewer FLOPs than v1.5.
          resnet18_cifar: the same architecture as ours, built here from Keras layers ('same' padding).
  torch   transformers.ResNetForImageClassification in eager mode (channels_last unless
          --torch-memory-format contiguous), torch.optim.SGD. Both cases are ResNet v1.5 as ours;
          for resnet18_cifar its 7x7/2 + max-pool stem is replaced by a 3x3/1 convolution layer (conv,
          BatchNorm, ReLU) and no pooling, so that the network is ours layer for layer.
Each is compiled / warmed up first; then R rounds alternate the contenders (rotating the order), each
round timing N steps. A jitted 2048x2048 float32 matmul measured between rounds gives the peak that
utilisation is quoted against; FLOPs per step are XLA's count for our step, credited to all three.
Every ratio is ours / theirs (< 1: ours faster); the timing loop and the table are bench/common.py's.
JAX, TensorFlow and PyTorch run in this one process and each uses every core while it runs.

Usage (CPU, one JAX device; ~5 minutes for both cases on 2 cores):
  .venv/bin/python bench/vision_train_step.py --case all
  .venv/bin/python bench/vision_train_step.py --case resnet50 --batch 16 --rounds 3 --steps 2 \
      --json /tmp/r50.json
XLA_FLAGS are read by JAX's and by TensorFlow's XLA alike: to try a JAX-only flag, leave out keras
(--contenders ours,torch).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # A CPU benchmark: the references run on the CPU too.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("USE_TF", "0")  # transformers: PyTorch models only.
os.environ["KERAS_BACKEND"] = "tensorflow"  # The keras contender is defined as the TensorFlow backend.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402
import numpy as np  # noqa: E402

import configs.vision_classification  # noqa: E402
from lm import compiler, config_checks  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py)

CONTENDERS = ("ours", "ours_xla_default", "keras", "torch")
CASES = {  # name: (config argument, image size, default batch, default rounds, default steps)
    "resnet50": ("resnet50,imagenet2012", 224, 16, 3, 2),
    "resnet18_cifar": ("resnet18_cifar,cifar10", 32, 128, 3, 2),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="all", choices=(*CASES, "all"))
    parser.add_argument("--batch", type=int, default=0, help="0: the case's default (16 / 128)")
    parser.add_argument("--rounds", type=int, default=0, help="0: the case's default (3)")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed steps per contender per round; 0: the case's default (2)")
    parser.add_argument("--contenders", default="ours,keras,torch", help="comma-separated subset of "
                        + ",".join(CONTENDERS))
    parser.add_argument("--torch-memory-format", default="channels_last",
                        choices=("channels_last", "contiguous"))
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads; 0: every core. On a loaded machine 1 can be faster: "
                        "OpenMP barriers wait for threads the scheduler has parked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the results to this path")
    args = parser.parse_args(argv)
    args.contenders = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
    unknown = sorted(set(args.contenders) - set(CONTENDERS))
    if unknown or not args.contenders:
        parser.error(f"--contenders: unknown {unknown}; choose from {','.join(CONTENDERS)}.")
    for key in ("batch", "rounds", "steps"):
        if getattr(args, key) < 0:
            parser.error(f"--{key}={getattr(args, key)} must be positive (or 0 for the case's default).")
    return args


def rerun_command(args: argparse.Namespace) -> str:
    words = [common.script_path(__file__), "--case", args.case, "--contenders", ",".join(args.contenders)]
    for key in ("batch", "rounds", "steps"):
        if getattr(args, key):
            words += [f"--{key}", str(getattr(args, key))]
    if args.torch_memory_format != "channels_last":
        words += ["--torch-memory-format", args.torch_memory_format]
    if args.torch_threads:
        words += ["--torch-threads", str(args.torch_threads)]
    if args.json:
        words += ["--json", args.json]
    return common.rerun_command(words)


def case_settings(args: argparse.Namespace, case: str) -> dict:
    arg, image_size, batch, rounds, steps = CASES[case]
    return {"case": case, "config_arg": arg, "image_size": image_size, "batch": args.batch or batch,
            "rounds": args.rounds or rounds, "steps": args.steps or steps}


def model_config(settings: dict):
    config = configs.vision_classification.get_config(settings["config_arg"])
    # The recipe's learning rate scaled linearly to this batch, without warm-up: the three contenders train
    # at the same rate (a diverging run would not time the same arithmetic).
    config.optimizer.learning_rate *= settings["batch"] / config.global_batch_size
    config.optimizer.warmup_fraction = 0.0
    config.global_batch_size = settings["batch"]
    config.num_train_steps = common.TOTAL_STEPS
    config.mesh.data = 1
    return config_checks.resolved_copy(config)


def host_batch(settings: dict, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = settings["image_size"]
    return {
        "image": rng.standard_normal((settings["batch"], size, size, 3), dtype=np.float32),
        "label": rng.integers(0, num_classes, settings["batch"], dtype=np.int32),
    }


class Ours(common.Ours):
    """Our step; `ynn_fusions` sets config.xla_cpu_ynn_fusions (lm/compiler.py)."""

    def __init__(self, config, batch: dict[str, np.ndarray], ynn_fusions: str | None = None):
        config = config.copy_and_resolve_references()
        if ynn_fusions is not None:
            config.xla_cpu_ynn_fusions = ynn_fusions
        super().__init__(config, batch)
        self.note = (f"ResNet-{config.model.depth} v1.5, {config.model.variant} stem, NHWC, "
                     f"xla_cpu_ynn_fusions={config.xla_cpu_ynn_fusions!r}")


def keras_resnet18_cifar(keras, num_classes: int, width: int = 64):
    """Ours, layer for layer: 3x3/1 stem, basic blocks [2, 2, 2, 2], projection shortcuts, last BN scale 0."""
    layers = keras.layers

    def conv_bn(x, features, kernel_size, strides, zero_scale=False):
        x = layers.Conv2D(features, kernel_size, strides, padding="same", use_bias=False,
                          kernel_initializer="he_normal")(x)
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                         gamma_initializer="zeros" if zero_scale else "ones")(x)

    inputs = keras.Input((None, None, 3))
    x = layers.ReLU()(conv_bn(inputs, width, 3, 1))
    in_features = width
    for stage in range(4):
        features = width * 2**stage
        for index in range(2):
            strides = 2 if stage > 0 and index == 0 else 1
            y = layers.ReLU()(conv_bn(x, features, 3, strides))
            y = conv_bn(y, features, 3, 1, zero_scale=True)
            shortcut = x if strides == 1 and in_features == features else conv_bn(x, features, 1, strides)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
            in_features = features
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="resnet18_cifar")


class Keras(common.Contender):
    name = "keras"

    def __init__(self, config, batch: dict[str, np.ndarray]):
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(config.seed)
        model_config, opt = config.model, config.optimizer
        if model_config.depth == 50 and model_config.variant == "imagenet":
            size = batch["image"].shape[1]
            self.model = keras.applications.ResNet50(
                weights=None, input_shape=(size, size, 3), classes=model_config.num_classes,
                classifier_activation=None,
            )
            self.note = "keras.applications.ResNet50: ResNet v1, conv biases"
        elif model_config.depth == 18 and model_config.variant == "cifar":
            self.model = keras_resnet18_cifar(keras, model_config.num_classes, model_config.width)
            self.note = "ResNet-18 CIFAR from keras.layers, 'same' padding"
        else:
            raise ValueError(f"No Keras model for ResNet-{model_config.depth} ({model_config.variant}).")
        optimizer = keras.optimizers.SGD(opt.learning_rate, momentum=opt.momentum, nesterov=opt.nesterov,
                                         weight_decay=opt.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])  # As our decay mask.
        self.model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                      label_smoothing=config.label_smoothing),
            jit_compile=True,
        )
        self.images = tf.constant(batch["image"])
        self.targets = tf.one_hot(batch["label"], model_config.num_classes)
        self.last_loss = None

    def run(self, steps: int) -> None:
        for _ in range(steps):  # train_on_batch returns the loss as a number: each step ends synchronised.
            self.last_loss = self.model.train_on_batch(self.images, self.targets)

    def loss(self) -> float:
        return float(self.last_loss)


class Torch(common.Contender):
    name = "torch"

    def __init__(self, config, batch: dict[str, np.ndarray], threads: int, memory_format: str):
        import torch
        import transformers
        from transformers.models.resnet import modeling_resnet

        torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        self.torch = torch
        model_config, opt = config.model, config.optimizer
        bottleneck = model_config.depth >= 50
        stages = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}
        if model_config.depth not in stages:
            raise ValueError(f"No PyTorch model for ResNet-{model_config.depth}.")
        width = model_config.width
        hf_config = transformers.ResNetConfig(
            embedding_size=width, depths=stages[model_config.depth],
            hidden_sizes=[width * 2**i * (4 if bottleneck else 1) for i in range(4)],
            layer_type="bottleneck" if bottleneck else "basic", num_labels=model_config.num_classes,
        )
        self.model = transformers.ResNetForImageClassification(hf_config)
        self.note = f"HF ResNet{'Bottleneck' if bottleneck else 'Basic'}, {memory_format}, {threads} threads"
        if model_config.variant == "cifar":  # Ours: a 3x3/1 conv + BN + ReLU stem, no max-pool.
            embedder = self.model.resnet.embedder
            embedder.embedder = modeling_resnet.ResNetConvLayer(3, width, kernel_size=3, stride=1)
            embedder.pooler = torch.nn.Identity()
            self.note += ", 3x3/1 stem swapped in"
        self.format = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        self.model = self.model.to(memory_format=self.format)
        self.model.train()
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opt.learning_rate, momentum=opt.momentum, nesterov=opt.nesterov,
        )
        self.label_smoothing = config.label_smoothing
        images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)  # NCHW view of the NHWC array.
        self.images = images.contiguous(memory_format=self.format)
        self.labels = torch.from_numpy(batch["label"]).long()
        self.last_loss = None

    def run(self, steps: int) -> None:
        functional = self.torch.nn.functional
        for _ in range(steps):
            logits = self.model(pixel_values=self.images).logits
            loss = functional.cross_entropy(logits, self.labels, label_smoothing=self.label_smoothing)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.last_loss = loss.detach()

    def loss(self) -> float:
        return float(self.last_loss)


def build(args: argparse.Namespace, config, batch: dict[str, np.ndarray]) -> dict[str, common.Contender]:
    threads = args.torch_threads or common.cores()

    def make(name: str) -> common.Contender:
        if name in ("ours", "ours_xla_default"):
            return Ours(config, batch, compiler.XLA_DEFAULT if name == "ours_xla_default" else None)
        if name == "keras":
            return Keras(config, batch)
        return Torch(config, batch, threads, args.torch_memory_format)

    return common.build(args.contenders, make)


def summarize(settings: dict, contenders: dict[str, common.Contender], timing: common.Timing) -> dict:
    return {"settings": settings, "matmul_peak_flops_per_second": timing.peak,
            "contenders": common.rows(contenders, timing, items_per_step=settings["batch"]),
            "ratio_reading": common.RATIO_READING, "ratios": common.ratios(timing),
            "load_average_after": os.getloadavg()[0]}


def print_table(result: dict) -> None:
    s = result["settings"]
    print(f"\n{s['case']} ({s['config_arg']}), {s['image_size']}x{s['image_size']}, batch {s['batch']}, "
          f"{s['rounds']} rounds x {s['steps']} steps; matmul peak (2048^2 fp32, jitted) "
          f"{result['matmul_peak_flops_per_second'] / 1e9:.1f} GFLOP/s; "
          f"load average {result['load_average_after']:.1f}")
    common.print_rows(result["contenders"], items="img/s")
    common.print_ratios(result["ratios"])


def run_case(args: argparse.Namespace, case: str) -> dict:
    settings = case_settings(args, case)
    config = model_config(settings)
    batch = host_batch(settings, config.model.num_classes, args.seed)
    print(f"\nBuilding {', '.join(args.contenders)} for {case} (batch {settings['batch']}, "
          f"{settings['image_size']}x{settings['image_size']}) on {jax.devices()[0]}", flush=True)
    contenders = build(args, config, batch)
    timing = common.measure(contenders, settings["rounds"], settings["steps"])
    result = summarize(settings, contenders, timing)
    del contenders  # Frees the states before the next case builds its own.
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if "force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        print("warning: XLA_FLAGS fakes several host devices; this benchmark uses the first one only.")
    cases = tuple(CASES) if args.case == "all" else (args.case,)
    results = {case: run_case(args, case) for case in cases}
    for result in results.values():
        print_table(result)
    output = {
        "command": rerun_command(args),
        "environment": common.environment(),
        "cases": results,
    }
    print(f"\nrerun: {output['command']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(output, f, indent=2)
        print(f"results: {args.json}")
    return output


if __name__ == "__main__":
    main()
