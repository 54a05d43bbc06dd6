"""Peak FLOP/s per device by device kind and compute dtype: what MFU (model FLOPs utilisation) is quoted against.

Dense numbers from the vendors' datasheets (the "with sparsity" figures are twice these), per JAX device:
a GPU, a TPU chip from v4 on (one device per chip), a TensorCore on TPU v2/v3 (two devices per chip).
  - NVIDIA H100 SXM / H200 SXM: BF16 989 TFLOP/s, TF32 495 (H100 and H200 Tensor Core GPU datasheets);
    H100 PCIe: BF16 756, TF32 378; H100 NVL and H200 NVL: BF16 835, TF32 418.
  - NVIDIA A100 (SXM and PCIe, 40 and 80 GB): BF16 312, TF32 156 (A100 datasheet).
  - NVIDIA L4: BF16 121, TF32 60 (L4 datasheet). A10: BF16 125, TF32 62.5 (A10 datasheet).
  - NVIDIA B200: BF16 2250, TF32 1100 (HGX B200 datasheet, per GPU).
  - Google Cloud TPU, BF16 per chip (cloud.google.com/tpu/docs system architecture pages): v2 45 (22.5 per
    core), v3 123 (61.5 per core), v4 275, v5e 197, v5p 459, v6e (Trillium) 918.
float32: JAX computes float32 matrix products at its default precision on TF32 tensor cores on NVIDIA GPUs from
Ampere on, and as bfloat16 passes on TPU (docs.jax.dev "Matmul precision"), so a float32 model is quoted
against the TF32 peak on GPU and the BF16 peak on TPU.

Device kinds not in the table (CPUs, other GPUs) get no datasheet peak: `lm.metrics.mfu_peak` then measures a
matmul and says so in the label.
"""

import dataclasses

import jax

TERA = 1e12

# (substring of jax.Device.device_kind, lower case; name) -> {compute dtype: dense peak FLOP/s}. The first match
# wins, so more specific kinds ("h100 pcie") come before the general one ("h100").
PEAK_FLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("h100 pcie", "NVIDIA H100 PCIe", {"bfloat16": 756 * TERA, "float32": 378 * TERA}),
    ("h100 nvl", "NVIDIA H100 NVL", {"bfloat16": 835 * TERA, "float32": 418 * TERA}),
    ("h100", "NVIDIA H100 SXM", {"bfloat16": 989 * TERA, "float32": 495 * TERA}),
    ("h200 nvl", "NVIDIA H200 NVL", {"bfloat16": 835 * TERA, "float32": 418 * TERA}),
    ("h200", "NVIDIA H200 SXM", {"bfloat16": 989 * TERA, "float32": 495 * TERA}),
    ("a100", "NVIDIA A100", {"bfloat16": 312 * TERA, "float32": 156 * TERA}),
    ("b200", "NVIDIA B200", {"bfloat16": 2250 * TERA, "float32": 1100 * TERA}),
    ("l4", "NVIDIA L4", {"bfloat16": 121 * TERA, "float32": 60 * TERA}),
    ("a10", "NVIDIA A10", {"bfloat16": 125 * TERA, "float32": 62.5 * TERA}),
    ("tpu v2", "TPU v2 (per core)", {"bfloat16": 22.5 * TERA, "float32": 22.5 * TERA}),
    ("tpu v3", "TPU v3 (per core)", {"bfloat16": 61.5 * TERA, "float32": 61.5 * TERA}),
    ("tpu v4", "TPU v4", {"bfloat16": 275 * TERA, "float32": 275 * TERA}),
    ("tpu v5 lite", "TPU v5e", {"bfloat16": 197 * TERA, "float32": 197 * TERA}),
    ("tpu v5e", "TPU v5e", {"bfloat16": 197 * TERA, "float32": 197 * TERA}),
    ("tpu v5", "TPU v5p", {"bfloat16": 459 * TERA, "float32": 459 * TERA}),
    ("tpu v6 lite", "TPU v6e", {"bfloat16": 918 * TERA, "float32": 918 * TERA}),
    ("tpu v6e", "TPU v6e", {"bfloat16": 918 * TERA, "float32": 918 * TERA}),
)
# Kinds that contain a table key but are other chips: "TPU v4 lite" (v4i, inference) is not a v4, "A10G" (AWS)
# is not an A10, "L40"/"L40S" are not an L4.
_NOT_IN_TABLE = ("tpu v4 lite", "a10g", "l40")


@dataclasses.dataclass(frozen=True)
class Peak:
    flops_per_second: float  # per device
    label: str  # what the number is, for logs: "NVIDIA H100 SXM bfloat16 datasheet peak (dense)"
    measured: bool = False  # True: a matmul timed on this device, not a datasheet number.


def datasheet_peak(device_kind: str, dtype: str) -> Peak | None:
    """The dense datasheet peak of `device_kind` (a jax.Device.device_kind) for compute `dtype`; None if unknown."""
    kind = device_kind.lower()
    if any(other in kind for other in _NOT_IN_TABLE):
        return None
    for key, name, peaks in PEAK_FLOPS:
        if key in kind and dtype in peaks:
            return Peak(peaks[dtype], f"{name} {dtype} datasheet peak (dense)")
    return None


def device_peak(dtype: str, device: jax.Device | None = None) -> Peak | None:
    """`datasheet_peak` of `device` (default: the first local device)."""
    device = jax.local_devices()[0] if device is None else device
    return datasheet_peak(device.device_kind, dtype)
