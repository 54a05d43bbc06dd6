"""`--mode=serve`: a trained workdir behind the HTTP server (lm.serving.server), with drift monitoring.

The drift reference is the validation profile that `--mode=export_savedmodel` records in the workdir
(`serving_reference.json`); without it the server runs and reports no drift score.

It runs in one process: a model that trained on many hosts serves from one (its checkpoint restores on any
device count). Started on many hosts it stops at once in every process, before binding the port or loading.
"""

import json
import logging
import os
import time

import ml_collections
import tensorflow as tf

from lm import config_checks
from lm.serving import feedback, monitor, servable, server, trained, transport

log = logging.getLogger(__name__)

REFERENCE_FILE = "serving_reference.json"


def read_reference(workdir: str) -> dict | None:
    path = os.path.join(workdir, REFERENCE_FILE)
    if not tf.io.gfile.exists(path):
        log.warning("No %s: drift is not measured. --mode=export_savedmodel records it from the validation set.",
                    path)
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def options(config: ml_collections.ConfigDict) -> server.ServeOptions:
    s = config.serving
    return server.ServeOptions(host=s.host, port=s.port, max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms,
                               close_when_idle=s.close_when_idle, max_queue=s.max_queue,
                               max_body_bytes=s.max_body_bytes, max_instances=s.max_instances,
                               feedback_path=s.feedback_path)


def check_one_process() -> None:
    """Raises unless this is the only process: each host's server would answer on its own, and write the one
    feedback file with the others; the first to stop would bring the others down within
    config.distributed.timeout_s (the coordination service takes a departed process for a dead one)."""
    import jax

    if jax.process_count() > 1:
        raise ValueError(
            f"--mode=serve runs in one process; this is process {jax.process_index()} of {jax.process_count()}. "
            "Start it on one host without config.distributed.coordinator_address, num_processes, auto_detect or "
            "$JAX_COORDINATOR_ADDRESS (the checkpoint restores on any device count); for more throughput, start one "
            "such server per host behind a load balancer."
        )


def build(config: ml_collections.ConfigDict, workdir: str) -> server.ModelServer:
    """The server, its model loaded and every batch shape compiled; not yet serving. The feedback file is checked
    and the port bound first: a path that cannot be written or a port in use fails in a moment, not after the model
    loaded and compiled."""
    config_checks.check_static(config)
    check_one_process()
    if config.serving.feedback_path:
        feedback.check_writable(config.serving.feedback_path)
    bound = transport.bind(config.serving.host, config.serving.port)
    log.info("Bound %s:%d; the server listens once the model is loaded and compiled.", *bound.server_address[:2])
    try:
        served, metrics = _load(config, workdir)
        return server.ModelServer(served, options(config), metrics, bound)
    except BaseException:
        bound.server_close()
        raise


def _load(config: ml_collections.ConfigDict, workdir: str) -> tuple[servable.PaddedServable, monitor.ServingMetrics]:
    """The servable, its model loaded and every batch shape compiled, and its metrics."""
    model = trained.load(workdir, str(config.eval_checkpoint), config.serving.length_buckets)
    name = config.serving.model_name or os.path.basename(os.path.normpath(workdir))
    served = servable.for_model(model, name, config.serving.max_batch_size)
    start = time.perf_counter()
    shapes = served.warm_up()
    log.info("Compiled and ran %d input shapes in %.1f s (batch sizes %s%s): no request waits for a compile.",
             shapes, time.perf_counter() - start, list(served.batch_sizes),
             f", lengths {list(model.length_buckets)}" if model.length_buckets else "")
    metrics = monitor.ServingMetrics(model.label_names, config.serving.max_batch_size, read_reference(workdir),
                                     config.serving.drift_window, config.serving.drift_threshold)
    return served, metrics


def run_serve(config: ml_collections.ConfigDict, workdir: str) -> dict:
    model_server = build(config, workdir)
    model_server.install_sigterm()
    model_server.serve_forever()
    return {"served": model_server.servable.name}
