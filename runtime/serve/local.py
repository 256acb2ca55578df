"""The HTTP API on Python's standard-library server, without Ray: one process, one request at a time on the model
(no dynamic batching). The tests use it to check the API end to end where Ray is not installed; it also suits a
single-user tool. `ssae serve` runs the same `Api` on Ray Serve.

```python
from ssae.runtime.serve.local import LocalServer
with LocalServer(engine, ApiConfig(), port=0) as srv:      # 127.0.0.1, a free port
    Client(srv.url).edit("face.jpg", roi="hair", seed=3)
```
"""
from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .api import (Api, ApiConfig, ApiError, EditJob, HealthJob, MasksJob, Request, Response, check_size,
                  is_client_error)
from .engine import EditOutcome, Engine

log = logging.getLogger("ssae.runtime.serve")
DRAIN_LIMIT = 1 << 30  # refused bodies up to this size are read and dropped before answering
SOCKET_TIMEOUT_S = 30.0


def handle(api: Api, engine: Engine, req: Request) -> Response:
    """Run one request to the end (synchronously). Never raises: failures become JSON error responses."""
    try:
        job = api.parse(req)
        if isinstance(job, Response):
            return job
        if isinstance(job, HealthJob):
            return api.render_health(engine.health())
        if isinstance(job, MasksJob):
            return api.render_masks(engine.masks(job.rgb))
        assert isinstance(job, EditJob)
        out = engine.edit_batch([job])[0]
        if not isinstance(out, EditOutcome):
            raise out
        return api.render_edit(out.image, out.timings, out.batch_size)
    except Exception as e:  # noqa: BLE001 - reported as JSON, logged here
        if not is_client_error(e):
            log.exception("request %s %s failed", req.method, req.path)
        return api.render_failure(e)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S  # a client that stops sending (or never sends) frees its thread

    def _serve(self) -> None:
        api, engine = self.server.api, self.server.engine
        req = Request.from_target(self.command, self.path, dict(self.headers.items()))
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        try:
            if length < 0:
                raise ApiError(400, "invalid Content-Length header")
            # route, token and declared size before any byte of the body is read
            api.precheck(req, declared_length=None if chunked else length)
            req.body = self._read_chunked(api.config.max_body_bytes) if chunked else (
                self.rfile.read(length) if length else b"")
        except ApiError as e:
            if chunked:
                self.close_connection = True  # the rest of a refused chunked body is not read
            else:
                self._drain(length)
            self._send(Response.error(e.status, e.message))
            return
        self._send(handle(api, engine, req))

    def _read_chunked(self, limit: int) -> bytes:
        """A chunked request body, refused (413) as soon as it exceeds `limit`."""
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                n = int(line.split(b";")[0].strip() or b"x", 16)
            except ValueError:
                raise ApiError(400, "malformed chunked body") from None
            if n == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            check_size(len(body) + n, limit)
            body += self.rfile.read(n)
            self.rfile.readline(8)

    def _drain(self, length: int) -> None:
        """Read and drop a refused body (a client still sending it would otherwise see a reset connection instead
        of the error); bodies beyond DRAIN_LIMIT close the connection instead."""
        if 0 < length <= DRAIN_LIMIT:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)
        if length:
            self.close_connection = True  # an unread body must not be parsed as the next request

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, fmt: str, *args) -> None:  # through logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, api: Api, engine: Engine):
        super().__init__(addr, _Handler)
        self.api, self.engine = api, engine


def warn_if_open(host: str, token: str | None) -> bool:
    """Log a warning (and return True) when a server binds beyond loopback without a token."""
    import ipaddress
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if not loop and not token:
        log.warning("ssae serve: listening on %s WITHOUT a token: anyone who reaches this address can use the "
                    "model; set SSAE_TOKEN", host or "all interfaces")
        return True
    return False


class LocalServer:
    """The API on `host:port` in a background thread (port 0: a free port). A context manager."""

    def __init__(self, engine: Engine, config: ApiConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.engine = engine
        self.api = Api(config or ApiConfig(), engine.rois)
        warn_if_open(host, self.api.config.token)
        self._srv = _Server((host, port), self.api, engine)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._srv.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalServer":
        self._thread = threading.Thread(target=self._srv.serve_forever, name="ssae-local-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
