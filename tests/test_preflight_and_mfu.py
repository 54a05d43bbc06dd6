"""The pre-flight report and its memory check, MFU against the device's datasheet peak, and where the time goes."""

import glob
import logging
import os
import time

import jax
import numpy as np
import pytest
import tensorflow as tf

import lm
from configs import common
from lm import hardware, metrics, preflight, step_log
from tests import text_data
from tests.test_train import files_config


@pytest.mark.parametrize("kind, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989), ("NVIDIA H100 PCIe", "bfloat16", 756),
    ("NVIDIA H200", "bfloat16", 989), ("NVIDIA H200", "float32", 495), ("NVIDIA A100-SXM4-80GB", "bfloat16", 312),
    ("NVIDIA A100-PCIE-40GB", "float32", 156), ("NVIDIA L4", "bfloat16", 121), ("TPU v4", "bfloat16", 275),
    ("TPU v5 lite", "bfloat16", 197), ("TPU v5", "bfloat16", 459), ("TPU v6 lite", "bfloat16", 918),
    ("TPU v3", "float32", 61.5),
])
def test_datasheet_peak_by_device_kind(kind, dtype, tflops):
    peak = hardware.datasheet_peak(kind, dtype)
    assert peak.flops_per_second == pytest.approx(tflops * 1e12) and not peak.measured
    assert dtype in peak.label and "datasheet" in peak.label


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA L40S", "NVIDIA A10G", "TPU v4 lite", "TPU7x"])
def test_unknown_kinds_have_no_datasheet_peak(kind):
    assert hardware.datasheet_peak(kind, "bfloat16") is None


class _Device:
    def __init__(self, kind):
        self.device_kind = kind


def test_mfu_peak_prefers_config_then_datasheet_then_a_labelled_measurement():
    config = common.training_defaults()
    config.model = common.bert_model_config("tiny", dtype="bfloat16")
    tpu = metrics.mfu_peak(config, _Device("TPU v5 lite"))
    assert tpu.flops_per_second == 197e12 and metrics.mfu_name(tpu) == "mfu"
    cpu = metrics.mfu_peak(config, jax.devices("cpu")[0])
    assert cpu.measured and "measured" in cpu.label and cpu.flops_per_second > 0
    assert metrics.mfu_name(cpu) == "mfu_vs_measured_matmul"
    config.peak_flops_per_device = 5e12
    assert metrics.mfu_peak(config, _Device("TPU v5 lite")).flops_per_second == 5e12


def test_window_timer_input_wait_fraction():
    timer = metrics.WindowTimer()
    with timer.waiting_for_input():
        time.sleep(0.05)
    time.sleep(0.05)
    timer.time_step(lambda x: x * 2, jax.numpy.ones(4))
    scalars = timer.scalars(steps=2)
    assert 0.0 < scalars["input_wait_fraction"] < 1.0
    assert scalars["seconds_per_step"] >= 0.05 and scalars["device_seconds_per_step"] > 0


def _scalars(workdir) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return values


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reviews")
    return text_data.write_csv(folder / "reviews.csv", text_data.sentiment_rows(100)), text_data.write_vocab(
        folder / "vocab.txt")


def test_run_logs_preflight_input_wait_and_device_time(tmp_path, reviews, caplog):
    csv_path, vocab = reviews
    config = files_config(vocab, csv_path, num_train_steps=4, log_every=2, eval_every=100, eval_splits_at_end=())
    with caplog.at_level(logging.INFO):
        lm.run(config, str(tmp_path), "train")
    preflight_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Pre-flight")]
    assert any("parameters" in line and "FLOPs per step" in line for line in preflight_lines), preflight_lines
    assert any("GiB per device" in line for line in preflight_lines), preflight_lines
    assert any("measured" in r.getMessage() and "MFU" in r.getMessage() for r in caplog.records)
    scalars = _scalars(tmp_path)
    assert len(scalars["train/input_wait_fraction"]) == 2
    assert all(0.0 <= value <= 1.0 for value in scalars["train/input_wait_fraction"])
    assert all(value > 0 for value in scalars["train/device_seconds_per_step"])
    assert "train/mfu_vs_measured_matmul" in scalars and "train/mfu" not in scalars


def test_step_over_the_memory_limit_stops_before_any_step(tmp_path, reviews):
    csv_path, vocab = reviews
    config = files_config(vocab, csv_path, num_train_steps=4, device_memory_limit_bytes=1 << 20,
                          peak_flops_per_device=1.0, **{"debug.step_log": True})
    with pytest.raises(preflight.StepDoesNotFit) as error:
        lm.run(config, str(tmp_path), "train")
    message = str(error.value)
    for fix in ("global_batch_size", "grad_accum_steps", "remat", "fsdp", "no step has run", "device_memory_limit"):
        assert fix in message, message
    assert step_log.read(str(tmp_path)) == [["start", "0"]]  # No step ran.
    assert not [p for p in (tmp_path / "checkpoints").glob("*") if p.name.isdigit()]
    np.testing.assert_array_less(1 << 20, float(message.split(" GiB per device")[0].split()[-1]) * 1024**3)


class _Writer:
    def __init__(self):
        self.written = {}

    def write_scalars(self, step, scalars):
        self.written[step] = scalars


@pytest.mark.parametrize("measured", [False, True])
def test_train_scalars_of_a_window_with_a_skipped_step(measured):
    """What a logging window writes: means over its finite steps only, how many steps were skipped, examples/s
    from the global batch, and MFU = FLOPs per update / seconds per step / the device's peak, named by what the
    peak is."""
    import types

    from lm import train

    nan = float("nan")
    history = [{"loss": 1.0, "grad_norm": 2.0, "nonfinite": 0}, {"loss": 3.0, "grad_norm": 4.0, "nonfinite": 0},
               {"loss": nan, "grad_norm": nan, "nonfinite": 1}, {"loss": 2.0, "grad_norm": 3.0, "nonfinite": 0}]
    exp = types.SimpleNamespace(config=types.SimpleNamespace(global_batch_size=8), schedule=lambda step: 0.01 * step)
    timing = {"seconds_per_step": 0.5, "input_wait_fraction": 0.25, "device_seconds_per_step": 0.4}
    writer = _Writer()
    train._log_train(writer, exp, 4, history, timing, 1e9, hardware.Peak(4e9, "test peak", measured=measured))
    scalars = writer.written[4]
    mfu = "train/mfu_vs_measured_matmul" if measured else "train/mfu"
    assert scalars == pytest.approx({
        "train/loss": 2.0, "train/grad_norm": 3.0, "train/nonfinite_skips": 1.0, "train/examples_per_second": 16.0,
        "train/learning_rate": 0.03, "train/seconds_per_step": 0.5, "train/input_wait_fraction": 0.25,
        "train/device_seconds_per_step": 0.4, mfu: 0.5,
    })
