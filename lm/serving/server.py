"""`--mode=serve`: an HTTP server in TF Serving's REST shape, with dynamic batching, metrics and feedback.

- `POST /v1/models/<name>:predict` with `{"instances": [...]}` -> `{"predictions": [{"label", "probabilities",
  "prediction_id"}, ...]}`, in request order.
- `POST /v1/models/<name>:feedback` with `{"instances": [{<input>, "label": ...}]}` or
  `{"instances": [{"prediction_id": ..., "label": ...}]}` -> appended to the feedback file (training data).
- `GET /v1/models/<name>`: status; `GET /metrics`: Prometheus text (lm.serving.monitor).
Errors are JSON `{"error": message}`: 400 malformed JSON or instance, 404 unknown path or model, 405 wrong
method, 411 no Content-Length, 413 body or instance count over the limit, 415 not JSON, 503 queue full or not
serving, 500 model failure. Each instance is checked before it joins a batch, so one bad request never fails
another. SIGTERM (`install_sigterm`) refuses new requests, lets the ones in flight finish, then stops.

The standard library's ThreadingHTTPServer is enough here: each request thread only parses, queues and waits;
the model work happens in the one batching thread (lm.serving.batcher), so no extra dependency is needed.
"""

import collections
import dataclasses
import errno
import json
import logging
import re
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import numpy as np

from lm.serving import batcher as batcher_lib
from lm.serving import monitor
from lm.serving.feedback import FeedbackLog

log = logging.getLogger(__name__)

_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?::(?P<verb>[a-z]+))?$")


class BadInstance(ValueError):
    """An instance that cannot be served: the message says what is wrong (HTTP 400)."""


class Servable(Protocol):
    """What the server needs of a model; `lm.serving.predict` builds one from a workdir."""

    name: str
    version: int
    label_names: tuple[str, ...]

    def parse(self, instance: object) -> object:
        """Checks and converts one request instance (raises BadInstance)."""

    def predict(self, examples: list) -> np.ndarray:
        """Class probabilities [len(examples), classes] for parsed examples."""

    def feedback_record(self, instance: object, label: str, feedback: FeedbackLog) -> dict:
        """The training-data line for `instance` labelled `label` (raises BadInstance)."""


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8501
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    close_when_idle: bool = True  # A batch closes early when no other request is being read (lm.serving.batcher).
    max_queue: int = 1024
    max_body_bytes: int = 10 * 2**20
    max_instances: int = 256
    request_timeout_s: float = 60.0
    feedback_path: str = ""
    remembered_predictions: int = 10000  # Prediction ids kept for feedback by id...
    remembered_bytes: int = 256 * 2**20  # ... and the most their inputs may hold (a base64 image is large).


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ModelServer:
    """Owns the HTTP server, the batcher, the metrics and the feedback log of one servable.

    `bound`: the server socket `bind` returned, when the port was taken before the model loaded; by default the
    port of `options` is bound here."""

    def __init__(self, servable: Servable, options: ServeOptions, metrics: monitor.ServingMetrics,
                 bound: "_HTTPServer | None" = None):
        self.servable = servable
        self.options = options
        self.metrics = metrics
        self.feedback = FeedbackLog(options.feedback_path) if options.feedback_path else None
        self.batcher = batcher_lib.DynamicBatcher(
            servable.predict, options.max_batch_size, options.max_wait_ms, options.max_queue,
            on_batch=metrics.observe_batch, on_queue_depth=metrics.set_queue_depth,
            close_when_idle=options.close_when_idle)
        self._recent: collections.OrderedDict[str, tuple[object, int]] = collections.OrderedDict()
        self._recent_bytes = 0
        self._recent_lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_cond = threading.Condition()
        self._draining = False
        self.httpd = bound if bound is not None else bind(options.host, options.port)
        self.httpd.RequestHandlerClass = _handler_class(self)
        try:
            self.httpd.server_activate()  # Listens: from now on a client waits in the backlog until serve_forever.
        except OSError as e:  # Another server bound the port too (SO_REUSEADDR) and listened first.
            self.httpd.server_close()
            raise OSError(_bind_error(options.host, self.httpd.server_address[1], e)) from None

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def serve_forever(self) -> None:
        self.batcher.start()
        log.info("Serving %r (step %d) on http://%s:%d/v1/models/%s", self.servable.name, self.servable.version,
                 *self.address, self.servable.name)
        self.httpd.serve_forever()
        self.httpd.server_close()

    def drain_and_stop(self) -> None:
        """Refuses new requests, waits for those in flight, then stops the batcher and the server."""
        with self._in_flight_cond:
            self._draining = True
            while self._in_flight:
                self._in_flight_cond.wait()
        self.batcher.stop()
        self.httpd.shutdown()
        log.info("Drained and stopped.")

    def install_sigterm(self) -> None:
        """SIGTERM drains in a helper thread (the signal handler itself must return at once)."""
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=self.drain_and_stop).start())

    # Request handling, called from the handler threads.

    def handle(self, method: str, path: str, headers, read_body) -> tuple[int, dict | str]:
        if path == "/metrics":
            if method != "GET":
                raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "Use GET for /metrics.")
            return HTTPStatus.OK, self.metrics.render()
        match = _MODEL_PATH.match(path)
        if not match:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"No such path {path!r}; use /v1/models/{self.servable.name}"
                             f"[:predict|:feedback] or /metrics.")
        if match["name"] != self.servable.name:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"Model {match['name']!r} is not served here; this server serves "
                             f"{self.servable.name!r}.")
        if match["version"] is not None and int(match["version"]) != self.servable.version:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"Version {match['version']} is not served; the served version "
                             f"is {self.servable.version}.")
        verb = match["verb"]
        if verb is None:
            if method != "GET":
                raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "Use GET for the model status.")
            return HTTPStatus.OK, self._status()
        if verb not in ("predict", "feedback"):
            raise _HttpError(HTTPStatus.NOT_FOUND, f"Unknown verb {verb!r}; use :predict or :feedback.")
        if method != "POST":
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"Use POST for :{verb}.")
        if self._draining:
            raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "The server is shutting down.")
        if verb == "feedback":
            return HTTPStatus.OK, self._feedback(self._instances(headers, read_body))
        with self.batcher.arriving():  # The open batch may wait for this request while it is read and checked.
            instances = self._instances(headers, read_body)
            futures = self._submit(self._parse_all(instances))
        return HTTPStatus.OK, self._predictions(instances, futures)

    def enter(self) -> bool:
        with self._in_flight_cond:
            if self._draining:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._in_flight_cond:
            self._in_flight -= 1
            self._in_flight_cond.notify_all()

    def _status(self) -> dict:
        state = "UNLOADING" if self._draining else "AVAILABLE"
        return {"model_version_status": [{"version": str(self.servable.version), "state": state,
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def _instances(self, headers, read_body) -> list:
        content_type = headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             f"Content-Type {content_type!r} is not supported; send application/json.")
        body = _parse_json(read_body(self._content_length(headers)))
        if not isinstance(body, dict) or "instances" not in body:
            raise _HttpError(HTTPStatus.BAD_REQUEST, 'The body must be a JSON object with an "instances" list.')
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise _HttpError(HTTPStatus.BAD_REQUEST, '"instances" must be a non-empty list.')
        if len(instances) > self.options.max_instances:
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"{len(instances)} instances; the limit is {self.options.max_instances} a request.")
        return instances

    def _content_length(self, headers) -> int:
        """The body's length: 411 without the header, 400 unless it is a whole number (a negative one would read
        to the end of the stream), 413 over max_body_bytes."""
        value = headers.get("Content-Length")
        if value is None:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "A Content-Length header is required.")
        value = value.strip()
        if not (value.isascii() and value.isdigit()):
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length {value[:40]!r} is not a number of bytes.")
        length = int(value) if len(value) <= 18 else 10**18  # Longer is over any limit (and over int()'s digits).
        if length > self.options.max_body_bytes:
            shown = value if len(value) <= 18 else "over 10^18"
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"The body has {shown} bytes; the limit is "
                             f"{self.options.max_body_bytes}.")
        return length

    def _parse_all(self, instances: list) -> list:
        parsed = []
        for index, instance in enumerate(instances):
            try:
                parsed.append(self.servable.parse(instance))
            except BadInstance as e:
                raise _HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: {e}") from None
        return parsed

    def _submit(self, examples: list) -> list:
        try:
            return self.batcher.submit(examples)
        except (batcher_lib.QueueFull, batcher_lib.NotServing) as e:
            raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE, str(e)) from None

    def _predictions(self, instances: list, futures: list) -> dict:
        try:
            probabilities = np.stack([f.result(timeout=self.options.request_timeout_s) for f in futures])
        except FutureTimeout:
            raise _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "The model did not answer in time.") from None
        except Exception as e:
            raise _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"Model failure: {e}") from None
        self.metrics.observe_predictions(probabilities)
        predictions = []
        for instance, p in zip(instances, probabilities):
            prediction_id = uuid.uuid4().hex
            self._remember(prediction_id, instance)
            predictions.append({"label": self.servable.label_names[int(p.argmax())],
                                "probabilities": [float(x) for x in p], "prediction_id": prediction_id})
        return {"predictions": predictions}

    def _remember(self, prediction_id: str, instance: object) -> None:
        """Keeps the newest inputs by prediction id, within both the count and the byte limit."""
        size = _size(instance)
        with self._recent_lock:
            self._recent[prediction_id] = (instance, size)
            self._recent_bytes += size
            while self._recent and (len(self._recent) > self.options.remembered_predictions
                                    or self._recent_bytes > self.options.remembered_bytes):
                self._recent_bytes -= self._recent.popitem(last=False)[1][1]

    def _feedback(self, instances: list) -> dict:
        if self.feedback is None:
            raise _HttpError(HTTPStatus.NOT_FOUND,
                             "Feedback is off; start the server with config.serving.feedback_path.")
        checked = []
        for index, item in enumerate(instances):
            if not isinstance(item, dict) or "label" not in item:
                raise _HttpError(HTTPStatus.BAD_REQUEST, f'instances[{index}] must be an object with a "label".')
            try:
                label = feedback_label(item["label"], self.servable.label_names)
            except BadInstance as e:
                raise _HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: {e}") from None
            if "prediction_id" in item:
                if not isinstance(item["prediction_id"], str):
                    raise _HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: prediction_id is "
                                     f"{_json_kind(item['prediction_id'])}; send the string a prediction returned.")
                with self._recent_lock:
                    instance = self._recent.get(item["prediction_id"], (None, 0))[0]
                if instance is None:
                    raise _HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: prediction_id "
                                     f"{item['prediction_id']!r} is unknown or too old; send the input instead.")
            else:
                instance = {k: v for k, v in item.items() if k != "label"}
            try:
                self.servable.parse(instance)
            except BadInstance as e:
                raise _HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: {e}") from None
            checked.append((instance, label))
        # Only once every instance is valid: a request with a bad instance writes nothing (no image, no line).
        records = [self.servable.feedback_record(instance, label, self.feedback) for instance, label in checked]
        self.feedback.append(records)
        return {"recorded": len(records), "path": self.feedback.path}


def _parse_json(body: bytes) -> object:
    """The request body's JSON; anything that does not parse is a 400 with a short message."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"The body is not valid JSON: {e}.") from None
    except RecursionError:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "The body nests arrays or objects too deeply to parse; an instance "
                         "needs a few levels at most.") from None
    except ValueError:  # What else json.loads raises: Python's limit on an integer's digits.
        message = f"The body holds an integer of over {sys.get_int_max_str_digits()} digits, too long to parse."
        raise _HttpError(HTTPStatus.BAD_REQUEST, message) from None


def feedback_label(label: object, names: tuple[str, ...]) -> str:
    """The class name a feedback label means: a class name, or a class index (an integer, 0 <= i < len(names), in
    the order of the predictions' probabilities). An integer that is also a class name at another index is refused
    as ambiguous (out of range, it is the name); true and false are not indices."""
    expected = f"send a class name, one of {list(names)}, or its index 0..{len(names) - 1}"
    if isinstance(label, str):
        if label not in names:
            raise BadInstance(f"label {label!r} is not a class name; {expected}.")
        return label
    if isinstance(label, bool) or not isinstance(label, int):
        raise BadInstance(f"label is {_json_kind(label)}; {expected}.")
    in_range = 0 <= label < len(names)
    if str(label) in names and not in_range:  # Not an index: only the name can be meant.
        return str(label)
    if str(label) in names and names[label] != str(label):
        raise BadInstance(f"label {label} is ambiguous: the class named {str(label)!r} or the class at index {label}, "
                          f"{names[label]!r}; send the class name as a string.")
    if not in_range:
        raise BadInstance(f"label index {label} is out of range; {expected}.")
    return names[label]


def _json_kind(value: object) -> str:
    """How a JSON value that is neither a string nor an integer reads in a message (never the value itself: it may
    be large)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"the number {value!r}"
    return {dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


def _size(value: object) -> int:
    """About how much memory a parsed JSON value holds: its strings' lengths, 8 for anything else (no recursion:
    a deeply nested instance cannot overflow the stack)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            total += 8
    return total


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # Connections the kernel holds before accept; the default 5 resets clients under load.


def bind(host: str, port: int) -> _HTTPServer:
    """An HTTP server bound to host:port but not yet listening (ModelServer listens): a port in use fails here, at
    once, before a model loads or compiles, and until then a client is refused rather than left waiting. Port 0
    takes any free port (`server_address` says which)."""
    httpd = _HTTPServer((host, port), BaseHTTPRequestHandler, bind_and_activate=False)
    try:
        httpd.server_bind()
    except OSError as e:
        httpd.server_close()
        raise OSError(_bind_error(host, port, e)) from None
    return httpd


def _bind_error(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (f"config.serving.port={port} is in use (another server?); set --config.serving.port to a free port "
                "or 0 for any free one.")
    return (f"Cannot listen on config.serving.host={host!r}, config.serving.port={port}: {error.strerror or error}. "
            "Set --config.serving.host to an address of this machine (127.0.0.1, or 0.0.0.0 for every interface) "
            "and --config.serving.port to a free port (above 1023 without root) or 0 for any free one.")


def _has_body(headers) -> bool:
    return headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in headers


def _handler_class(server: ModelServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # Headers and body are separate writes: no 40 ms delayed-ACK stall.

        def log_message(self, format, *args):
            log.debug("%s " + format, self.address_string(), *args)

        def _serve(self, method: str) -> None:
            start = time.perf_counter()
            body_read = False

            def read_body(length: int) -> bytes:
                nonlocal body_read
                body_read = True
                return self.rfile.read(length)

            if not server.enter():
                status, payload = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "The server is shutting down."}
            else:
                try:
                    status, payload = server.handle(method, self.path, self.headers, read_body)
                except _HttpError as e:
                    status, payload = e.status, {"error": str(e)}
                except Exception as e:
                    log.exception("Unexpected server error.")
                    status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"Internal error: {e}"}
                finally:
                    server.leave()
            unread_body = not body_read and _has_body(self.headers)  # It must not be taken for the next request.
            text = payload if isinstance(payload, str) else json.dumps(payload)
            body = text.encode()
            # Counted before the answer leaves, so a client's next request already sees this one in /metrics.
            server.metrics.observe_request(int(status), time.perf_counter() - start)
            self.send_response(status)
            content_type = "text/plain; version=0.0.4" if isinstance(payload, str) else "application/json"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if unread_body:
                self.send_header("Connection", "close")  # Closes it after this answer, and tells the client.
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # http.server calls do_<METHOD>.
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_PUT(self):
            self._serve("PUT")

        def do_DELETE(self):
            self._serve("DELETE")

    return Handler
