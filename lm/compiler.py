"""XLA compiler options for the jitted train and eval steps, chosen per platform from the config.

On CPU, XLA hands some parts of a program to the YNNPACK library ("YNN fusions"): matrix products, chains
of elementwise operations, reductions and convolutions. What each kind is worth depends on the operation.
On this project's 2-core x86 CPU (jaxlib 0.10.2; commands in bench/README.md):
  - convolutions: a 3x3 convolution's forward and backward at batch 128, 32x32, 64 channels take ~0.25 s
    with XLA's own (Eigen) convolutions and ~0.75 s when YNNPACK runs them;
  - reductions: without YNNPACK, XLA rewrites a large reduction (a BatchNorm mean over batch x height x
    width) as a tree of reduce-window operations that run ~40x slower (80 ms against 2 ms for the case
    above);
  - elementwise chains: with YNNPACK's fusions BERT-mini's step takes ~1.3x and ResNet-50's ~1.15x the
    time it takes with XLA's own loop fusions.
So `config.xla_cpu_ynn_fusions` defaults to "dot,reduce". Against XLA's default set it makes a
ResNet-18-CIFAR train step ~2x faster (0.51 of the time, bench/vision_train_step.py) and BERT-mini's ~4%.
"xla_default" keeps XLA's own choice; "" turns YNNPACK off. Other platforms get no options.
"""

import jax
import ml_collections

CPU_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_KINDS = ("dot", "individual_dot", "eltwise", "reduce", "individual_convolution")
XLA_DEFAULT = "xla_default"


def ynn_kinds(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The YNNPACK fusion kinds `config.xla_cpu_ynn_fusions` names (None: XLA's default); a clear error for others."""
    value = config.xla_cpu_ynn_fusions
    if not isinstance(value, str):
        raise ValueError(f"config.xla_cpu_ynn_fusions={value!r} must be a string such as 'dot,reduce'.")
    if value == XLA_DEFAULT:
        return None
    kinds = tuple(kind.strip() for kind in value.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in YNN_KINDS]
    if unknown:
        raise ValueError(
            f"config.xla_cpu_ynn_fusions={value!r}: unknown kind(s) {unknown}. Give a comma-separated subset "
            f"of {', '.join(YNN_KINDS)}, '' for none, or {XLA_DEFAULT!r} for XLA's own choice."
        )
    return kinds


def step_options(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, str] | None:
    """`compiler_options` for `jax.jit` of a step that runs on `mesh`; None leaves XLA's defaults."""
    if mesh.devices.flat[0].platform != "cpu":
        return None
    options = {}
    kinds = ynn_kinds(config)
    if kinds is not None:
        options[CPU_OPTION] = ",".join(f"LIBRARY_FUSION_TYPE_{kind.upper()}" for kind in kinds)
    return options or None
