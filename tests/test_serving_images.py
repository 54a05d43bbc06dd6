"""Serving a trained tiny ResNet: predict on image files, the SavedModel on JPEG/PNG bytes in a fresh process,
and the server on base64 images, each against the model's own evaluation preprocessing."""

import base64
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import lm
from configs import vision_classification
from input_pipeline.common import BadExamples
from input_pipeline.sources import folder
from lm.serving import serve, trained

CLASSES = ("cat", "dog")
BROKEN = b"\x89PNG\r\n\x1a\n" + b"not really a png"  # PNG magic, then nothing that decodes.


def image_bytes(seed: int, label: int, fmt: str = "PNG") -> bytes:
    """A class-coloured noisy image of a random, non-square size (so evaluation's resize and crop both act)."""
    rng = np.random.default_rng(seed)
    height, width = rng.integers(18, 30, size=2)
    pixels = rng.integers(0, 90, (height, width, 3)) + np.array([140 * (label == 0), 140 * (label == 1), 30])
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, format=fmt)
    return out.getvalue()


def write_folder(root, per_class: int, seed: int):
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            fmt = "PNG" if j % 2 else "JPEG"
            (root / name / f"{j:02d}.{'png' if j % 2 else 'jpg'}").write_bytes(image_bytes(seed * 1000 + j, label, fmt))
    return root


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A workdir of a tiny ResNet trained for a few steps on an image folder (ImageNet normalisation by default,
    evaluated by resizing the shorter side to 20 and cropping the centre 16 x 16)."""
    tmp = tmp_path_factory.mktemp("image_serving")
    config = vision_classification.get_config("resnet_small,folder,smoke")
    config.data.train_dir = str(write_folder(tmp / "train", 20, seed=1))
    config.data.eval_resize = 20
    config.num_train_steps = 6
    config.eval_every = config.checkpoint_every = 6
    workdir = tmp / "run"
    lm.run(config, str(workdir), "train")
    return config, workdir


def jax_probabilities(workdir, contents: list[bytes]) -> np.ndarray:
    model = trained.load(str(workdir), "best")
    return np.asarray(jax.jit(model.probabilities)(model.variables, model.preprocess.encode(contents)))


def test_predict_accuracy_equals_eval_and_keeps_order_and_ids(image_run, tmp_path):
    config, workdir = image_run
    config = config.copy_and_resolve_references()  # The fixture's config is shared: change a copy.
    labelled = write_folder(tmp_path / "labelled", 9, seed=2)
    config.data.test_dir = str(labelled)
    config.eval_split = "test"
    evaluated = lm.run(config, str(workdir), "eval")

    config.serving.input_files = str(labelled)
    config.serving.output = str(tmp_path / "predictions.jsonl")
    assert lm.run(config, str(workdir), "predict")["count"] == 18
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    paths = sorted(str(p) for p in labelled.rglob("*") if p.is_file())
    assert [r["id"] for r in records] == [r["input"] for r in records] == paths
    accuracy = np.mean([r["label"] == os.path.basename(os.path.dirname(r["id"])) for r in records])
    assert accuracy == pytest.approx(evaluated["accuracy"], abs=1e-9)
    assert all(r["step"] == evaluated["step"] and set(r["probabilities"]) == set(CLASSES) for r in records)

    # A list of files keeps the order given, and matches the model on the same bytes.
    config.serving.input_files = ",".join([paths[5], paths[0]])
    lm.run(config, str(workdir), "predict")
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [paths[5], paths[0]]
    expected = jax_probabilities(workdir, [open(p, "rb").read() for p in (paths[5], paths[0])])
    np.testing.assert_allclose([[r["probabilities"][c] for c in CLASSES] for r in records], expected, atol=1e-6)


def test_a_corrupt_image_follows_the_policy_and_select_ranks_images(image_run, tmp_path):
    config, workdir = image_run
    config = config.copy_and_resolve_references()
    inputs = tmp_path / "unlabelled"
    inputs.mkdir()
    for i in range(6):
        (inputs / f"{i}.png").write_bytes(image_bytes(50 + i, i % 2))
    (inputs / "3b.png").write_bytes(BROKEN)
    config.serving.input_files = str(inputs)
    config.serving.output = str(tmp_path / "out.jsonl")
    with pytest.raises(ValueError, match="3b.png: the image does not decode"):
        lm.run(config, str(workdir), "predict")
    config.on_bad_example = "skip"
    assert lm.run(config, str(workdir), "predict")["count"] == 6

    config.serving.output = str(tmp_path / "selected.jsonl")
    config.serving.top_k, config.serving.label_studio = 3, True
    result = lm.run(config, str(workdir), "select")
    chosen = [json.loads(line) for line in (tmp_path / "selected.jsonl").read_text().splitlines()]
    assert len(chosen) == 3 and all("3b.png" not in c["id"] for c in chosen)
    tasks = json.loads(open(result["label_studio"]).read())
    assert tasks[0]["data"]["image"] == chosen[0]["id"]


LOAD_IN_FRESH_PROCESS = """
import json, sys
import tensorflow as tf
assert not any(m == "lm" or m.startswith(("lm.", "input_pipeline")) for m in sys.modules)  # Nothing of ours.
model = tf.saved_model.load(sys.argv[1])
images = [open(path, "rb").read() for path in json.loads(sys.argv[2])]
out = {}
for size in (1, 7):
    result = model.signatures["serving_default"](image_bytes=tf.constant(images[:size]))
    out[size] = {"probabilities": result["probabilities"].numpy().tolist(),
                 "label": [x.decode() for x in result["label"].numpy()]}
pixels = tf.zeros([3, *model.signatures["serve_inputs"].structured_input_signature[1]["image"].shape[1:]])
out["pixels"] = model.signatures["serve_inputs"](image=pixels)["probabilities"].shape.as_list()
print(json.dumps(out))
"""


def test_savedmodel_on_image_bytes_matches_jax_in_a_fresh_process(image_run, tmp_path):
    config, workdir = image_run
    config = config.copy_and_resolve_references()
    config.serving.export_dir = str(tmp_path / "export")
    config.data.train_dir = str(tmp_path / "moved")  # The drift reference reads the run's data (config.json).
    path = lm.run(config, str(workdir), "export_savedmodel")["export_dir"]
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.{'png' if i % 2 else 'jpg'}")
        paths[-1].write_bytes(image_bytes(70 + i, i % 2, "PNG" if i % 2 else "JPEG"))

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", LOAD_IN_FRESH_PROCESS, path, json.dumps([str(p) for p in paths])],
                            env=env, capture_output=True, text=True, timeout=300, check=True)
    served = json.loads(result.stdout.strip().splitlines()[-1])
    expected = jax_probabilities(workdir, [p.read_bytes() for p in paths])
    for size in ("1", "7"):
        np.testing.assert_allclose(served[size]["probabilities"], expected[: int(size)], atol=1e-5)
        assert served[size]["label"] == [CLASSES[i] for i in expected[: int(size)].argmax(1)]
    assert served["pixels"] == [3, 2]

    shown = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--dir", path,
                            "--all"], env=env, capture_output=True, text=True, timeout=300)
    assert "signature_def['serving_default']" in shown.stdout and "signature_def['serve_inputs']" in shown.stdout
    assert "inputs['image_bytes']" in shown.stdout and "inputs['image']" in shown.stdout

    from tensorflow_serving.apis import prediction_log_pb2

    warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    record = prediction_log_pb2.PredictionLog.FromString(next(iter(tf.data.TFRecordDataset(warmup))).numpy())
    request = record.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    warm_image = tf.make_ndarray(request.inputs["image_bytes"])[0]
    assert tf.io.decode_png(warm_image).shape == (16, 16, 3)


def test_serving_facts_are_recorded_and_rebuilt_from_the_data_when_missing(image_run, tmp_path):
    config, workdir = image_run
    facts = json.loads((workdir / "serving_facts.json").read_text())
    assert facts["label_names"] == list(CLASSES)
    assert facts["eval_images"] == {"image_size": 16, "channels": 3, "mean": [0.485, 0.456, 0.406],
                                    "std": [0.229, 0.224, 0.225], "eval_resize": 20}
    old = tmp_path / "old_run"
    shutil.copytree(workdir, old)
    (old / "serving_facts.json").unlink()
    assert trained.serving_facts(str(old), trained.run_config(str(old))) == facts


@pytest.fixture
def image_server(image_run, tmp_path):
    config, workdir = image_run
    config = config.copy_and_resolve_references()
    config.serving.update(port=0, max_batch_size=4, max_wait_ms=100.0, feedback_path=str(tmp_path / "fb.jsonl"))
    model_server = serve.build(config, str(workdir))
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    yield model_server, workdir
    model_server.drain_and_stop()
    thread.join(10)


def post(model_server, verb, instances):
    connection = http.client.HTTPConnection(*model_server.address, timeout=60)
    connection.request("POST", f"/v1/models/{model_server.servable.name}:{verb}",
                       body=json.dumps({"instances": instances}), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def b64(contents: bytes) -> str:
    return base64.b64encode(contents).decode()


def test_concurrent_image_requests_batch_and_a_bad_image_fails_alone(image_server):
    model_server, workdir = image_server
    images = [image_bytes(90 + i, i % 2, "PNG" if i % 3 else "JPEG") for i in range(8)]
    instances = [{"b64": b64(x)} if i % 2 else {"image": {"b64": b64(x)}} for i, x in enumerate(images)]
    bad = [{"b64": b64(BROKEN)}, {"b64": "@@not base64@@"}, {"b64": b64(b"GIF89a")}, {"image": "x"}]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda instance: post(model_server, "predict", [instance]), instances + bad))
    expected = jax_probabilities(workdir, images)
    for (status, body), row in zip(results, expected):
        assert status == 200
        np.testing.assert_allclose(body["predictions"][0]["probabilities"], row, atol=1e-5)
    messages = ["does not decode", "not valid base64", "neither JPEG nor PNG", '{"b64"']
    for (status, body), words in zip(results[len(images):], messages):
        assert status == 400 and words in body["error"]
    histogram = model_server.metrics.batch_size
    assert histogram.counts[0] < histogram.count  # Some model batch held more than one image.


def test_image_feedback_lands_in_a_folder_that_training_reads(image_server):
    model_server, _ = image_server
    cat, dog = image_bytes(200, 0), image_bytes(201, 1, "JPEG")
    status, body = post(model_server, "predict", [{"b64": b64(cat)}])
    assert status == 200
    feedback = [{"prediction_id": body["predictions"][0]["prediction_id"], "label": "cat"},
                {"b64": b64(dog), "label": 1}]  # The class index: dog.
    status, answer = post(model_server, "feedback", feedback)
    assert status == 200 and answer["recorded"] == 2
    assert post(model_server, "feedback", [{"b64": b64(cat), "label": "cat"}, {"b64": b64(BROKEN), "label": "dog"}]
                )[0] == 400
    images_dir = answer["path"][: -len(".jsonl")] + "_images"
    columns, names = folder.read_image_folder("train_dir", images_dir, BadExamples("error"))
    assert names == list(CLASSES) and len(columns["image"]) == 2  # The bad request above wrote no image.
    assert [open(p, "rb").read() for p in columns["image"]] == [cat, dog]
    assert [json.loads(line)["label"] for line in open(answer["path"])] == ["cat", "dog"]
