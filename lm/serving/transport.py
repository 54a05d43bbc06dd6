"""The HTTP side of `--mode=serve` (lm/serving/server.py): the server socket, the request handler and what it
checks of a request before the model server sees it (Content-Length, JSON).

`bind` takes the port before a model loads (a port in use fails at once); `handler_class(server)` reads each request
and writes its answer, calling `server.enter()`, `server.handle(method, path, headers, read_body)` and
`server.leave()`; `HttpError` is an answer other than 200. An answer given before the body was read closes the
connection, so the unread body is never taken for the next request.
"""

import errno
import json
import logging
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


class HttpError(Exception):
    """An answer other than 200: its status and the message sent as {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def content_length(headers, max_body_bytes: int) -> int:
    """The body's length: 411 without the header, 400 unless it is a whole number (a negative one would read
    to the end of the stream), 413 over max_body_bytes."""
    value = headers.get("Content-Length")
    if value is None:
        raise HttpError(HTTPStatus.LENGTH_REQUIRED, "A Content-Length header is required.")
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length {value[:40]!r} is not a number of bytes.")
    length = int(value) if len(value) <= 18 else 10**18  # Longer is over any limit (and over int()'s digits).
    if length > max_body_bytes:
        shown = value if len(value) <= 18 else "over 10^18"
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"The body has {shown} bytes; the limit is "
                        f"{max_body_bytes}.")
    return length


def parse_json(body: bytes) -> object:
    """The request body's JSON; anything that does not parse is a 400 with a short message."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"The body is not valid JSON: {e}.") from None
    except RecursionError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "The body nests arrays or objects too deeply to parse; an instance "
                        "needs a few levels at most.") from None
    except ValueError:  # What else json.loads raises: Python's limit on an integer's digits.
        message = f"The body holds an integer of over {sys.get_int_max_str_digits()} digits, too long to parse."
        raise HttpError(HTTPStatus.BAD_REQUEST, message) from None


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # Connections the kernel holds before accept; the default 5 resets clients under load.


def bind(host: str, port: int) -> HTTPServer:
    """An HTTP server bound to host:port but not yet listening (ModelServer listens): a port in use fails here, at
    once, before a model loads or compiles, and until then a client is refused rather than left waiting. Port 0
    takes any free port (`server_address` says which)."""
    httpd = HTTPServer((host, port), BaseHTTPRequestHandler, bind_and_activate=False)
    try:
        httpd.server_bind()
    except OSError as e:
        httpd.server_close()
        raise OSError(bind_error(host, port, e)) from None
    return httpd


def bind_error(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (f"config.serving.port={port} is in use (another server?); set --config.serving.port to a free port "
                "or 0 for any free one.")
    return (f"Cannot listen on config.serving.host={host!r}, config.serving.port={port}: {error.strerror or error}. "
            "Set --config.serving.host to an address of this machine (127.0.0.1, or 0.0.0.0 for every interface) "
            "and --config.serving.port to a free port (above 1023 without root) or 0 for any free one.")


def _has_body(headers) -> bool:
    return headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in headers


def handler_class(server):
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
                except HttpError as e:
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
