"""The explorer's web server and its exported page.

The server is Python's standard library (`http.server`): it serves one page, two static
files and one JSON endpoint to one user, so a web framework would add a dependency and
nothing else. Requests are answered on threads; the model runs one request at a time
(`Explainer`'s lock). Only the paths in STATIC and API are served: no request names a file.
"""

from __future__ import annotations

import http
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from transformer.explorer.analysis import Explainer, InputError
from transformer.files import write_atomically

MAX_REQUEST_BYTES = 64 * 1024  # A request is an input of at most 4,000 characters and two numbers.
STATIC = {
    "/": ("explorer.html", "text/html; charset=utf-8"),
    "/explorer.js": ("explorer.js", "text/javascript; charset=utf-8"),
    "/explorer.css": ("explorer.css", "text/css; charset=utf-8"),
}


class RequestTooLarge(InputError):
    """A request body over MAX_REQUEST_BYTES."""


def static_file(name: str) -> bytes:
    """One of the page's files, shipped in the package's static/ folder."""
    return (resources.files("transformer.explorer") / "static" / name).read_bytes()


class ExplorerHandler(BaseHTTPRequestHandler):
    """GET / and its two files, GET api/info, POST api/explain with {"text", "beam_size",
    "alpha"}; an error is JSON {"error": message} with a 4xx status."""

    explainer: Explainer  # Set on the subclass `serve` makes.
    files: dict[str, bytes]
    server_version = "TransformerExplorer"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/api/info":
            self._send_json(http.HTTPStatus.OK, self.explainer.info())
        elif path in STATIC:
            self._send(http.HTTPStatus.OK, self.files[path], STATIC[path][1])
        else:
            self._send_json(http.HTTPStatus.NOT_FOUND, {"error": f"No page at {path}."})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/api/explain":
            self._send_json(http.HTTPStatus.NOT_FOUND, {"error": "POST goes to /api/explain."})
            return
        try:
            request = self._read_request()
            result = self.explainer.explain(
                request.get("text"), request.get("beam_size", 1), request.get("alpha", 0.6)
            )
        except RequestTooLarge as e:
            self._send_json(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(e)})
            return
        except InputError as e:
            self._send_json(http.HTTPStatus.BAD_REQUEST, {"error": str(e)})
            return
        self._send_json(http.HTTPStatus.OK, result)

    def _read_request(self) -> dict[str, Any]:
        """The request's JSON object, or an InputError saying what is wrong with it."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise InputError("The request has no Content-Length.")
        if int(length) > MAX_REQUEST_BYTES:
            # Read and dropped, so that the client gets the answer; a huge one is not read.
            if int(length) <= 16 * MAX_REQUEST_BYTES:
                self.rfile.read(int(length))
            self.close_connection = True
            raise RequestTooLarge(f"The request has {length} bytes; at most {MAX_REQUEST_BYTES}.")
        body = self.rfile.read(int(length))
        try:
            request = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InputError(f"The input is not UTF-8 text (byte {e.start}).") from None
        except json.JSONDecodeError as e:
            raise InputError(f"The request is not JSON: {e}.") from None
        if not isinstance(request, dict):
            raise InputError('The request must be a JSON object {"text": ...}.')
        return request

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode("utf-8"), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stderr, as http.server writes it, without the client's
        address (always this machine's by default)."""
        sys.stderr.write(f"[{self.log_date_time_string()}] {format % args}\n")


class ExplorerServer(ThreadingHTTPServer):
    daemon_threads = True
    # http.server's default of 5 pending connections resets a burst of requests from one page
    # or script; the lock, not the queue, bounds the work.
    request_queue_size = 128


def make_server(explainer: Explainer, host: str = "127.0.0.1", port: int = 8000):
    """A ThreadingHTTPServer for `explainer` on host:port (port 0: a free one), not started."""
    files = {path: static_file(name) for path, (name, _) in STATIC.items()}
    handler = type("Handler", (ExplorerHandler,), {"explainer": explainer, "files": files})
    return ExplorerServer((host, port), handler)


def serve_in_background(server: ThreadingHTTPServer) -> threading.Thread:
    """Starts `server` on a daemon thread (for tests and notebooks); `server.shutdown()`."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def export_page(info: dict[str, Any], examples: list[dict[str, Any]], path: str) -> None:
    """Writes one self-contained HTML file: the page with its script, style and the
    explained `examples` inlined, which opens offline with no server. Written atomically."""
    page = static_file("explorer.html").decode("utf-8")
    style = static_file("explorer.css").decode("utf-8")
    script = static_file("explorer.js").decode("utf-8")
    # "</" would end the <script> element early; "<\/" is the same JSON string.
    data = json.dumps({"info": info, "examples": examples}).replace("</", "<\\/")
    script = script.replace("</script", "<\\/script")
    page = page.replace('<link rel="stylesheet" href="explorer.css">', f"<style>\n{style}</style>")
    page = page.replace(
        '<script src="explorer.js"></script>',
        f'<script id="explorer-data" type="application/json">{data}</script>\n'
        f"<script>\n{script}</script>",
    )
    write_atomically(path, page)
