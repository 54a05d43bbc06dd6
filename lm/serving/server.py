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
lm.serving.transport holds the HTTP side: the socket, the request handler, Content-Length and JSON parsing.
"""

import collections
import dataclasses
import json
import logging
import re
import signal
import threading
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from typing import Protocol

import numpy as np

from lm.serving import batcher as batcher_lib
from lm.serving import monitor, transport
from lm.serving.feedback import FeedbackLog
from lm.serving.transport import HttpError

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


class ModelServer:
    """Owns the HTTP server, the batcher, the metrics and the feedback log of one servable.

    `bound`: the server socket `bind` returned, when the port was taken before the model loaded; by default the
    port of `options` is bound here."""

    def __init__(self, servable: Servable, options: ServeOptions, metrics: monitor.ServingMetrics,
                 bound: transport.HTTPServer | None = None):
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
        self.httpd = bound if bound is not None else transport.bind(options.host, options.port)
        self.httpd.RequestHandlerClass = transport.handler_class(self)
        try:
            self.httpd.server_activate()  # Listens: from now on a client waits in the backlog until serve_forever.
        except OSError as e:  # Another server bound the port too (SO_REUSEADDR) and listened first.
            self.httpd.server_close()
            raise OSError(transport.bind_error(options.host, self.httpd.server_address[1], e)) from None

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
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "Use GET for /metrics.")
            return HTTPStatus.OK, self.metrics.render()
        match = _MODEL_PATH.match(path)
        if not match:
            raise HttpError(HTTPStatus.NOT_FOUND, f"No such path {path!r}; use /v1/models/{self.servable.name}"
                            f"[:predict|:feedback] or /metrics.")
        if match["name"] != self.servable.name:
            raise HttpError(HTTPStatus.NOT_FOUND, f"Model {match['name']!r} is not served here; this server serves "
                            f"{self.servable.name!r}.")
        if match["version"] is not None and int(match["version"]) != self.servable.version:
            raise HttpError(HTTPStatus.NOT_FOUND, f"Version {match['version']} is not served; the served version "
                            f"is {self.servable.version}.")
        verb = match["verb"]
        if verb is None:
            if method != "GET":
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "Use GET for the model status.")
            return HTTPStatus.OK, self._status()
        if verb not in ("predict", "feedback"):
            raise HttpError(HTTPStatus.NOT_FOUND, f"Unknown verb {verb!r}; use :predict or :feedback.")
        if method != "POST":
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"Use POST for :{verb}.")
        if self._draining:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "The server is shutting down.")
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
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            f"Content-Type {content_type!r} is not supported; send application/json.")
        body = transport.parse_json(read_body(transport.content_length(headers, self.options.max_body_bytes)))
        if not isinstance(body, dict) or "instances" not in body:
            raise HttpError(HTTPStatus.BAD_REQUEST, 'The body must be a JSON object with an "instances" list.')
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise HttpError(HTTPStatus.BAD_REQUEST, '"instances" must be a non-empty list.')
        if len(instances) > self.options.max_instances:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"{len(instances)} instances; the limit is {self.options.max_instances} a request.")
        return instances

    def _parse_all(self, instances: list) -> list:
        parsed = []
        for index, instance in enumerate(instances):
            try:
                parsed.append(self.servable.parse(instance))
            except BadInstance as e:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: {e}") from None
        return parsed

    def _submit(self, examples: list) -> list:
        try:
            return self.batcher.submit(examples)
        except (batcher_lib.QueueFull, batcher_lib.NotServing) as e:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, str(e)) from None

    def _predictions(self, instances: list, futures: list) -> dict:
        try:
            probabilities = np.stack([f.result(timeout=self.options.request_timeout_s) for f in futures])
        except FutureTimeout:
            raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "The model did not answer in time.") from None
        except Exception as e:
            raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"Model failure: {e}") from None
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
            raise HttpError(HTTPStatus.NOT_FOUND,
                            "Feedback is off; start the server with config.serving.feedback_path.")
        checked = []
        for index, item in enumerate(instances):
            if not isinstance(item, dict) or "label" not in item:
                raise HttpError(HTTPStatus.BAD_REQUEST, f'instances[{index}] must be an object with a "label".')
            try:
                label = feedback_label(item["label"], self.servable.label_names)
            except BadInstance as e:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: {e}") from None
            if "prediction_id" in item:
                if not isinstance(item["prediction_id"], str):
                    raise HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: prediction_id is "
                                    f"{_json_kind(item['prediction_id'])}; send the string a prediction returned.")
                with self._recent_lock:
                    instance = self._recent.get(item["prediction_id"], (None, 0))[0]
                if instance is None:
                    raise HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: prediction_id "
                                    f"{item['prediction_id']!r} is unknown or too old; send the input instead.")
            else:
                instance = {k: v for k, v in item.items() if k != "label"}
            try:
                self.servable.parse(instance)
            except BadInstance as e:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"instances[{index}]: {e}") from None
            checked.append((instance, label))
        # Only once every instance is valid: a request with a bad instance writes nothing (no image, no line).
        records = [self.servable.feedback_record(instance, label, self.feedback) for instance, label in checked]
        self.feedback.append(records)
        return {"recorded": len(records), "path": self.feedback.path}


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


