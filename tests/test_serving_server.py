"""The HTTP server with a model-free servable: REST shape, every error status, batching, SIGTERM drain."""

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from configs import bert_sentiment
from lm.serving import batcher as batcher_lib
from lm.serving import monitor, serve, server, trained, transport
from tests.serving_fakes import FakeTextServable, probabilities_of


@pytest.fixture
def running(tmp_path):
    """A server on a free port; yields (server, servable); stops it afterwards."""
    servable = FakeTextServable()
    options = server.ServeOptions(port=0, max_batch_size=8, max_wait_ms=20, max_queue=64, max_body_bytes=4096,
                                  max_instances=16, feedback_path=str(tmp_path / "feedback.jsonl"))
    metrics = monitor.ServingMetrics(servable.label_names, options.max_batch_size,
                                     reference=monitor.reference_profile(np.eye(3)[[0, 1, 2, 2]]))
    model_server = server.ModelServer(servable, options, metrics)
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    yield model_server, servable
    model_server.drain_and_stop()
    thread.join(10)


def request(model_server, method, path, body=None, headers=None, raw=None):
    connection = http.client.HTTPConnection(*model_server.address, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = response.read().decode()
    connection.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(payload) if is_json else payload


PREDICT = "/v1/models/fake:predict"


def test_predict_answers_in_request_order_with_the_models_probabilities(running):
    model_server, _ = running
    texts = ["good film", {"text": "a bad one"}, "so-so"]
    status, body = request(model_server, "POST", PREDICT, {"instances": texts})
    assert status == 200
    for text, prediction in zip(["good film", "a bad one", "so-so"], body["predictions"]):
        np.testing.assert_allclose(prediction["probabilities"], probabilities_of(text), rtol=1e-12)
        assert prediction["label"] == FakeTextServable.label_names[int(np.argmax(probabilities_of(text)))]
        assert len(prediction["prediction_id"]) == 32


def test_status_and_versioned_path(running):
    model_server, _ = running
    status, body = request(model_server, "GET", "/v1/models/fake")
    assert status == 200 and body["model_version_status"][0] == {
        "version": "7", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert request(model_server, "POST", "/v1/models/fake/versions/7:predict", {"instances": ["x"]})[0] == 200
    assert request(model_server, "POST", "/v1/models/fake/versions/3:predict", {"instances": ["x"]})[0] == 404


@pytest.mark.parametrize("kwargs, status, words", [
    ({"raw": b"{not json"}, 400, "not valid JSON"),
    ({"body": {"inputs": ["x"]}}, 400, '"instances"'),
    ({"body": {"instances": []}}, 400, "non-empty"),
    ({"body": {"instances": ["fine", 3]}}, 400, "instances[1]"),
    ({"body": {"instances": ["   "]}}, 400, "empty"),
    ({"body": {"instances": ["x"] * 17}}, 413, "limit is 16"),
    ({"raw": b'{"instances": ["' + b"y" * 5000 + b'"]}'}, 413, "limit is 4096"),
    ({"body": {"instances": ["x"]}, "headers": {"Content-Type": "text/plain"}}, 415, "application/json"),
])
def test_bad_requests_get_json_errors(running, kwargs, status, words):
    model_server, _ = running
    got, body = request(model_server, "POST", PREDICT, **kwargs)
    assert got == status and words in body["error"]


def test_a_body_too_deep_or_with_too_long_a_number_is_a_400_and_logs_no_traceback(caplog):
    """json.loads raises RecursionError on deep nesting and ValueError on an integer of over 4300 digits."""
    servable = FakeTextServable()
    model_server = server.ModelServer(servable, server.ServeOptions(port=0, max_body_bytes=10**6),
                                      monitor.ServingMetrics(servable.label_names, 32))
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.ERROR):
            status, body = request(model_server, "POST", PREDICT, raw=b"[" * 100000)
            assert status == 400 and body["error"].startswith("The body nests arrays or objects too deeply")
            nested = b"[" * 5000 + b"]" * 5000
            status, body = request(model_server, "POST", PREDICT, raw=b'{"instances": [' + nested + b"]}")
            assert status == 400 and "too deeply" in body["error"]
            status, body = request(model_server, "POST", PREDICT, raw=b'{"instances": [' + b"1" * 5000 + b"]}")
            assert status == 400 and body["error"] == ("The body holds an integer of over 4300 digits, too long to "
                                                       "parse.")
        assert "Unexpected server error" not in caplog.text
    finally:
        model_server.drain_and_stop()
        thread.join(10)


def test_unknown_paths_models_and_methods(running):
    model_server, _ = running
    assert request(model_server, "GET", "/v2/nothing")[0] == 404
    assert request(model_server, "POST", "/v1/models/other:predict", {"instances": ["x"]})[0] == 404
    assert request(model_server, "POST", "/v1/models/fake:classify", {"instances": ["x"]})[0] == 404
    assert request(model_server, "GET", PREDICT)[0] == 405
    assert request(model_server, "DELETE", "/v1/models/fake")[0] == 405
    assert request(model_server, "POST", "/metrics", {})[0] == 405


def test_a_content_length_that_is_not_a_whole_number_is_a_400(running):
    """A negative length used to read the stream to its end: no answer, and no limit on what was read."""
    model_server, _ = running
    for value in ("-1", "1_0", "12abc"):
        connection = http.client.HTTPConnection(*model_server.address, timeout=10)
        try:
            connection.putrequest("POST", PREDICT)
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", value)
            connection.endheaders(b'{"instances": ["a"]}')
            response = connection.getresponse()
            assert response.status == 400
            assert json.loads(response.read())["error"] == f"Content-Length {value!r} is not a number of bytes."
        finally:
            connection.close()  # Without the check, the server reads until the client closes.


def test_an_answer_before_the_body_is_read_closes_the_connection_and_says_so(running):
    """Else the unread body is taken for the next request on the connection."""
    model_server, _ = running
    connection = http.client.HTTPConnection(*model_server.address, timeout=10)
    for path, content_type, status in (("/v2/nothing", "application/json", 404), (PREDICT, "text/plain", 415),
                                       ("/v1/models/other:predict", "application/json", 404)):
        connection.request("POST", path, body=b'{"instances": ["x"]}', headers={"Content-Type": content_type})
        response = connection.getresponse()
        assert response.status == status and response.getheader("Connection") == "close"
        response.read()
        connection.request("POST", PREDICT, body=b'{"instances": ["x"]}', headers={"Content-Type": "application/json"})
        response = connection.getresponse()  # http.client opened a new connection.
        assert response.status == 200 and response.getheader("Connection") is None
        response.read()
    connection.close()


def test_queue_full_is_503(running):
    model_server, servable = running
    servable.delay_s = 0.5  # The queue holds 64 instances; ten requests of 16 arrive while a batch runs.
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: request(model_server, "POST", PREDICT, {"instances": ["c"] * 16}),
                                range(10)))
    statuses = [status for status, _ in results]
    assert 503 in statuses and 200 in statuses
    assert "queue is full" in next(body for status, body in results if status == 503)["error"]


def test_concurrent_clients_form_batches_and_each_gets_its_own_answer(running):
    model_server, servable = running
    texts = [f"review number {i} " + "a" * (i % 4) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda t: request(model_server, "POST", PREDICT, {"instances": [t]}), texts))
    for text, (status, body) in zip(texts, results):
        assert status == 200
        np.testing.assert_allclose(body["predictions"][0]["probabilities"], probabilities_of(text), rtol=1e-12)
    assert max(servable.batch_sizes) > 1
    assert max(servable.batch_sizes) <= 8


def test_a_bad_request_in_a_busy_batch_fails_alone(running):
    model_server, _ = running
    bodies = [{"instances": [f"text {i}"]} for i in range(6)] + [{"instances": [""]}, {"instances": ["explode"]}]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: request(model_server, "POST", PREDICT, b), bodies))
    assert [status for status, _ in results[:6]] == [200] * 6
    assert results[6][0] == 400  # Refused before batching.
    assert results[7][0] == 500 and "cannot take" in results[7][1]["error"]  # Failed in the model, alone.


def test_metrics_in_prometheus_text(running):
    model_server, _ = running
    request(model_server, "POST", PREDICT, {"instances": ["one", "two"]})
    request(model_server, "POST", PREDICT, {"instances": [""]})
    status, text = request(model_server, "GET", "/metrics")
    assert status == 200
    assert 'lm_requests_total{code="200"} 1' in text and 'lm_requests_total{code="400"} 1' in text
    assert 'lm_request_latency_seconds_bucket{le="+Inf"} 2' in text
    assert "lm_batch_size_count 1" in text and "lm_queue_depth 0" in text
    predicted = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("lm_predictions_total{"))
    assert predicted == 2
    assert 'lm_drift_psi{view="class"}' in text and "lm_mean_confidence" in text


def test_feedback_by_input_and_by_prediction_id_writes_training_lines(running, tmp_path):
    model_server, _ = running
    _, body = request(model_server, "POST", PREDICT, {"instances": ["remember me"]})
    prediction_id = body["predictions"][0]["prediction_id"]
    feedback = {"instances": [{"text": "new words", "label": "pos"}, {"prediction_id": prediction_id, "label": "neg"}]}
    status, answer = request(model_server, "POST", "/v1/models/fake:feedback", feedback)
    assert status == 200 and answer["recorded"] == 2
    lines = [json.loads(line) for line in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert lines == [{"text": "new words", "label": "pos"}, {"text": "remember me", "label": "neg"}]
    bad = {"instances": [{"text": "x", "label": "maybe"}]}
    assert request(model_server, "POST", "/v1/models/fake:feedback", bad)[0] == 400
    unknown = {"instances": [{"prediction_id": "nope", "label": "pos"}]}
    assert request(model_server, "POST", "/v1/models/fake:feedback", unknown)[0] == 400
    not_an_id = {"instances": [{"prediction_id": [[prediction_id]], "label": "pos"}]}
    status, answer = request(model_server, "POST", "/v1/models/fake:feedback", not_an_id)
    assert status == 400 and answer["error"] == ("instances[0]: prediction_id is an array; send the string a "
                                                 "prediction returned.")


def test_feedback_label_may_be_the_class_index_and_is_stored_as_its_name(running, tmp_path):
    model_server, _ = running
    feedback = "/v1/models/fake:feedback"
    by_name = {"instances": [{"text": "great", "label": "pos"}, {"text": "meh", "label": "neg"}]}
    by_index = {"instances": [{"text": "great", "label": 2}, {"text": "meh", "label": 0}]}
    assert request(model_server, "POST", feedback, by_name)[0] == 200
    assert request(model_server, "POST", feedback, by_index)[0] == 200
    lines = (tmp_path / "feedback.jsonl").read_text().splitlines()
    assert lines[:2] == lines[2:] == ['{"text": "great", "label": "pos"}', '{"text": "meh", "label": "neg"}']
    for label, words in ((True, "label is true"), (3, "label index 3 is out of range"), (-1, "index -1"),
                         (1.0, "the number 1.0"), (None, "label is null"), ([1], "an array"), ("2", "'2' is not")):
        status, body = request(model_server, "POST", feedback, {"instances": [{"text": "x", "label": label}]})
        assert status == 400 and words in body["error"]
        assert "send a class name, one of ['neg', 'neu', 'pos'], or its index 0..2." in body["error"]
    assert len((tmp_path / "feedback.jsonl").read_text().splitlines()) == 4  # The refused ones wrote nothing.


def test_an_integer_label_that_is_also_a_class_name_elsewhere_is_ambiguous():
    assert server.feedback_label(1, ("0", "1")) == server.feedback_label("1", ("0", "1")) == "1"
    assert server.feedback_label(0, ("1", "2", "3")) == "1"
    with pytest.raises(server.BadInstance, match="label 2 is ambiguous: the class named '2' or the class at index 2"):
        server.feedback_label(2, ("1", "2", "3"))
    assert server.feedback_label(3, ("1", "2", "3")) == "3"  # Not an index (out of range): only the name fits.
    assert server.feedback_label(5, ("a", "b", "5")) == "5"
    with pytest.raises(server.BadInstance, match="label index 4 is out of range"):
        server.feedback_label(4, ("1", "2", "3"))


def test_remembered_predictions_stay_within_the_byte_limit(tmp_path):
    """Inputs kept for feedback by prediction id are dropped oldest first once they pass `remembered_bytes`."""
    servable = FakeTextServable()
    options = server.ServeOptions(port=0, remembered_bytes=250, feedback_path=str(tmp_path / "feedback.jsonl"))
    model_server = server.ModelServer(servable, options, monitor.ServingMetrics(servable.label_names, 32))
    try:
        for i in range(5):
            model_server._remember(f"id{i}", "x" * 100)  # Each about 100 bytes: two fit, three do not.
        assert list(model_server._recent) == ["id3", "id4"] and model_server._recent_bytes == 200
    finally:
        model_server.httpd.server_close()


def test_a_burst_of_connections_waits_for_accept_instead_of_being_refused():
    """Sixty clients connect before the server accepts any (the standard library's backlog is 5): every
    connection is held by the kernel and answered once the server runs."""
    servable = FakeTextServable()
    model_server = server.ModelServer(servable, server.ServeOptions(port=0),
                                      monitor.ServingMetrics(servable.label_names, 32))
    connections = []
    for _ in range(60):
        connection = http.client.HTTPConnection(*model_server.address, timeout=2)
        connection.connect()  # Times out once the backlog is full (the kernel drops further SYNs).
        connections.append(connection)
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    try:
        for connection in connections:
            connection.request("GET", "/v1/models/fake")
            assert connection.getresponse().status == 200
            connection.close()
    finally:
        model_server.drain_and_stop()
        thread.join(10)


@pytest.fixture
def busy_port():
    """A port another socket listens on, held open for the test."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


def test_a_port_in_use_fails_before_the_model_loads_naming_the_key_and_the_fix(busy_port, monkeypatch, tmp_path):
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(trained, "load", load)
    config = bert_sentiment.get_config("files")
    config.serving.port = busy_port
    expected = (f"config.serving.port={busy_port} is in use (another server?); set --config.serving.port to a free "
                "port or 0 for any free one.")
    with pytest.raises(OSError) as raised:
        serve.build(config, str(tmp_path))
    assert str(raised.value) == expected
    servable = FakeTextServable()
    metrics = monitor.ServingMetrics(servable.label_names, 8)
    with pytest.raises(OSError, match=f"config.serving.port={busy_port} is in use"):
        server.ModelServer(servable, server.ServeOptions(port=busy_port), metrics)


def test_a_feedback_path_that_cannot_be_written_fails_before_the_model_loads(loads, tmp_path):
    """Checked at the start of serving (its directory created if missing, as for other outputs), not at the first
    feedback after the model loaded and compiled."""
    config = bert_sentiment.get_config("files")
    config.serving.port = 0
    (tmp_path / "a_file").write_text("not a directory")
    fix = ("Set --config.serving.feedback_path to a file in a directory this server can write (a missing directory "
           "is created), or to '' to turn feedback off.")
    for path, reason in ((tmp_path / "a_file" / "feedback.jsonl", "a_file is not a directory"),
                         (tmp_path, "it is a directory")):
        config.serving.feedback_path = str(path)
        with pytest.raises(OSError) as raised:
            serve.build(config, str(tmp_path))
        assert str(raised.value).startswith(f"config.serving.feedback_path={str(path)!r} cannot be written: ")
        assert reason in str(raised.value) and str(raised.value).endswith(fix)
        servable = FakeTextServable()
        with pytest.raises(OSError, match="config.serving.feedback_path=.* cannot be written"):
            server.ModelServer(servable, server.ServeOptions(port=0, feedback_path=str(path)),
                               monitor.ServingMetrics(servable.label_names, 8))
    assert not loads
    config.serving.feedback_path = str(tmp_path / "new" / "folder" / "feedback.jsonl")
    with pytest.raises(RuntimeError, match="stop at the model"):
        serve.build(config, str(tmp_path))
    assert loads and os.listdir(tmp_path / "new" / "folder") == []  # Created; the probe file removed.


def test_the_port_is_bound_at_once_and_listens_once_the_server_is_built():
    """Bound (port 0: any free one, which `server_address` names) but refusing clients while the model would load
    and compile; ModelServer listens."""
    bound = transport.bind("127.0.0.1", 0)
    port = bound.server_address[1]
    assert port > 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    servable = FakeTextServable()
    metrics = monitor.ServingMetrics(servable.label_names, 8)
    model_server = server.ModelServer(servable, server.ServeOptions(port=0), metrics, bound)
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    try:
        assert model_server.address == ("127.0.0.1", port)
        assert request(model_server, "GET", "/v1/models/fake")[0] == 200
    finally:
        model_server.drain_and_stop()
        thread.join(10)


def test_two_servers_bound_to_one_port_the_second_to_listen_fails_clearly():
    """Two serve processes started together both bind (SO_REUSEADDR) while neither listens yet: the one that listens
    second fails with the same message as a port already in use, not a bare OSError."""
    first, second = transport.bind("127.0.0.1", 0), None
    port = first.server_address[1]
    try:
        second = transport.bind("127.0.0.1", port)
        servable = FakeTextServable()
        metrics = monitor.ServingMetrics(servable.label_names, 8)
        first.server_activate()
        with pytest.raises(OSError, match=f"config.serving.port={port} is in use"):
            server.ModelServer(servable, server.ServeOptions(port=port), metrics, second)
    finally:
        first.server_close()


def test_sigterm_drains_in_flight_requests_and_exits(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, "-m", "tests.serving_fakes", "1.0"], cwd=root,
                               stdout=subprocess.PIPE, text=True)
    port = int(process.stdout.readline())
    address = type("Address", (), {"address": ("127.0.0.1", port)})()
    result = {}
    slow = threading.Thread(target=lambda: result.update(r=request(address, "POST", PREDICT, {"instances": ["x"]})))
    slow.start()
    deadline = time.monotonic() + 30
    while "lm_batch_size_count 1" not in request(address, "GET", "/metrics")[1]:  # In flight: the batch takes 1 s.
        assert time.monotonic() < deadline, "the request never reached the batcher"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    slow.join(30)
    assert result["r"][0] == 200
    assert process.wait(30) == 0
    assert process.stdout.read().strip() == "stopped"


def test_a_batch_waits_only_for_requests_on_their_way_in():
    """close_when_idle: the open batch waits (here up to a minute) while another request is being read, and
    closes at once when none is: a lone request does not wait max_wait_ms for nobody."""
    sizes = []
    batcher = batcher_lib.DynamicBatcher(lambda xs: sizes.append(len(xs)) or np.zeros((len(xs), 1)),
                                         max_batch_size=8, max_wait_ms=60_000, max_queue=16, close_when_idle=True)
    batcher.start()
    try:
        with batcher.arriving():  # A second request is being read and checked.
            first = batcher.submit(["a"])[0]
            time.sleep(0.2)
            assert not first.done()  # Its batch waits for the arriving request...
            second = batcher.submit(["b"])[0]
        first.result(timeout=30), second.result(timeout=30)
        assert sizes == [2]  # ... which joins it.
        batcher.submit(["c"])[0].result(timeout=30)  # Alone: answered long before the minute is up.
        assert sizes == [2, 1]
    finally:
        batcher.stop()
