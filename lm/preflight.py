"""The pre-flight report: what a step costs, logged once it is compiled and before it first runs.

Parameters (total and trained), FLOPs per step (XLA's cost analysis of the partitioned program: per device,
and over all devices) and the memory of the compiled step per device (`compiled.memory_analysis()`): the
arguments (this device's shard of the train state, and of the batch), the outputs, the temporaries
(activations kept for the backward pass, gradients, workspace) and the generated code, less the outputs that
reuse donated arguments. Where a limit is known (`config.device_memory_limit_bytes`, else the device's own
`bytes_limit` on GPU and TPU; CPUs report none) a step that needs more raises `StepDoesNotFit` before any step
runs, naming the fixes.
"""

import dataclasses
import logging

import jax
import ml_collections

log = logging.getLogger(__name__)
GIB = 1024**3


class StepDoesNotFit(MemoryError):
    """The compiled train step needs more memory per device than the device has."""


@dataclasses.dataclass(frozen=True)
class Report:
    parameters: int
    trained_parameters: int
    flops_per_step: float  # per device
    devices: int
    memory: dict[str, int] | None  # per device, by part; None where the backend gives no memory analysis
    limit_bytes: int | None  # per device; None where unknown

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else self.memory["total"]


def step_memory(compiled) -> dict[str, int] | None:
    """Bytes per device of a compiled program by part, and their `total`; None if the backend does not say."""
    try:
        stats = compiled.memory_analysis()
    except Exception as error:  # Optional in XLA: some backends do not implement it.
        log.warning("No memory analysis of the compiled step (%s).", error)
        return None
    if stats is None:
        return None
    parts = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "temporaries": int(stats.temp_size_in_bytes),
        "generated_code": int(stats.generated_code_size_in_bytes),
        "aliased": int(stats.alias_size_in_bytes),
    }
    total = parts["arguments"] + parts["outputs"] + parts["temporaries"] + parts["generated_code"] - parts["aliased"]
    return {**parts, "total": total}


def device_memory_limit(config: ml_collections.ConfigDict, device: jax.Device | None = None) -> int | None:
    """config.device_memory_limit_bytes if set, else what the device's allocator may use (None on CPU)."""
    if config.device_memory_limit_bytes > 0:
        return int(config.device_memory_limit_bytes)
    return device_bytes_limit(jax.local_devices()[0] if device is None else device)


def device_bytes_limit(device: jax.Device) -> int | None:
    """The bytes the device's allocator may use (`memory_stats()["bytes_limit"]`); None where it does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # Backends without memory statistics (CPU) raise or return None: no limit to check.
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def report(config: ml_collections.ConfigDict, spec, compiled, flops_per_step: float) -> Report:
    """Logs the pre-flight report of a compiled train step; raises StepDoesNotFit if it cannot fit."""
    sizes = [(leaf.size, bool(trains)) for leaf, trains in zip(jax.tree.leaves(spec.abstract["params"]),
                                                               jax.tree.leaves(spec.trainable))]
    result = Report(
        parameters=sum(size for size, _ in sizes),
        trained_parameters=sum(size for size, trains in sizes if trains),
        flops_per_step=flops_per_step,
        devices=jax.device_count(),
        memory=step_memory(compiled),
        limit_bytes=device_memory_limit(config),
    )
    log.info("Pre-flight: %s parameters (%s trained); %.4g FLOPs per step per device, %.4g over %d devices.",
             f"{result.parameters:,}", f"{result.trained_parameters:,}", flops_per_step,
             flops_per_step * result.devices, result.devices)
    if result.memory is None:
        log.info("Pre-flight: no memory analysis from this backend; the step's memory is not checked.")
        return result
    parts = ", ".join(f"{name} {value / GIB:.3f}" for name, value in result.memory.items() if name != "total")
    limit = "no known device limit" if result.limit_bytes is None else f"limit {result.limit_bytes / GIB:.3f} GiB"
    log.info("Pre-flight: the compiled step needs %.3f GiB per device (%s GiB); %s.",
             result.memory["total"] / GIB, parts, limit)
    if result.limit_bytes is not None and result.memory["total"] > result.limit_bytes:
        raise StepDoesNotFit(_advice(config, result))
    return result


def _advice(config: ml_collections.ConfigDict, result: Report) -> str:
    source = ("config.device_memory_limit_bytes" if config.device_memory_limit_bytes > 0
              else "the device's bytes_limit")
    memory = result.memory
    return (
        f"The compiled train step needs {memory['total'] / GIB:.3f} GiB per device (train-state shard and batch "
        f"{memory['arguments'] / GIB:.3f} GiB, temporaries such as activations and gradients "
        f"{memory['temporaries'] / GIB:.3f} GiB) but {source} is {result.limit_bytes / GIB:.3f} GiB; no step "
        "has run. To fit: a smaller config.global_batch_size; or the same batch in micro-batches with "
        f"config.grad_accum_steps (now {config.grad_accum_steps}); or recompute activations in the backward pass "
        "with config.model.remat ('full' or 'dots_saveable'); or shard parameters and optimizer state over "
        f"more devices with config.mesh.fsdp (now {config.mesh.fsdp}); or compute in bfloat16 "
        f"(config.model.dtype, now {config.model.dtype!r})."
    )
