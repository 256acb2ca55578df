"""The HTTP API of `ssae serve`, independent of any web framework.

Ray Serve (`ssae.runtime.serve.deployment`) and the standard-library test server (`ssae.runtime.serve.local`) both turn an HTTP
request into a `Request`, call `Api.parse` (authentication, routing, size limit, parameters, image decoding) and
either return the error `Response` it gives or run the parsed job on an `Engine` and render the result with
`Api.render_edit` / `Api.render_masks` / `Api.render_health`. Every error is a JSON body `{"error": "..."}` with
one line of text, never a traceback.

| request | response |
|---|---|
| `GET /healthz` | 200 `{"status": "ok", "model": ..., "backend": ..., "rois": [...], "cache": {...}}` (no token needed) |
| `POST /edit?roi=hair&seed=3&strength=1.0[&noise=region\\|pixel][&output=photo\\|raw][&frame=face\\|whole][&faces=largest\\|all]`, image body | 200 `image/png` at the input's size (output=raw: the model's face crop); timings in `Server-Timing` and `X-SSAE-Timings` |
| `POST /masks`, image body | 200 `{"masks": {"hair": "<base64 PNG>", ...}, "width": W, "height": H}` |
| anything else | 404 (unknown path) or 405 (wrong method) |

Errors: 400 (not a decodable image, a bad parameter), 401 (the server has a token and the request lacks
`Authorization: Bearer <token>`), 413 (body over the size limit), 500 (an unexpected failure; logged server-side).
"""
from __future__ import annotations

import base64
import hmac
import io
import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union
from urllib.parse import parse_qs

import numpy as np
from PIL import Image

from ssae.runtime.images import ImageError, load_image
from ssae.runtime.editor import EditParams, choice_problem

#: Environment variable holding the bearer token a server requires (unset or empty: no authentication).
TOKEN_ENV = "SSAE_TOKEN"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")
MAX_SEED = 2**63 - 1
#: Accepted edit strengths: |strength| <= MAX_STRENGTH (beyond about 3 the unit-norm texture code is swamped).
MAX_STRENGTH = 10.0


class ApiError(Exception):
    """A request the API refuses: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message.splitlines()[0] if message else "error"


@dataclass
class Request:
    """One HTTP request as the API sees it. Header names are matched case-insensitively."""

    method: str
    path: str
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self.headers = {str(k).lower(): str(v) for k, v in dict(self.headers).items()}
        self.query = {k: list(v) if isinstance(v, (list, tuple)) else [str(v)] for k, v in dict(self.query).items()}

    @classmethod
    def from_target(cls, method: str, target: str, headers: Mapping[str, str] | None = None,
                    body: bytes = b"") -> "Request":
        """From a request target such as `/edit?roi=hair&seed=3` (path and query string)."""
        path, _, qs = target.partition("?")
        return cls(method, path, parse_qs(qs, keep_blank_values=True), headers or {}, body)


@dataclass
class Response:
    """What the API answers: status, body bytes, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj, headers: dict[str, str] | None = None) -> "Response":
        return cls(status, json.dumps(obj).encode(), "application/json", dict(headers or {}))

    @classmethod
    def error(cls, status: int, message: str) -> "Response":
        headers = {"WWW-Authenticate": 'Bearer realm="ssae"'} if status == 401 else {}
        return cls.json(status, {"error": message.splitlines()[0] if message else "error"}, headers)

    def json_body(self):
        return json.loads(self.body)


@dataclass(frozen=True)
class ApiConfig:
    """Limits and authentication of one server."""

    max_image_mb: float = 20.0           # request bodies above this many MiB are refused with 413
    token: str | None = None             # bearer token required on /edit and /masks (None or "": open)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_image_mb * (1 << 20))


@dataclass
class EditJob:
    """A parsed, validated edit request: the decoded image (uint8 H x W x 3) and its parameters."""

    rgb: np.ndarray
    params: EditParams


@dataclass
class MasksJob:
    """A parsed, validated masks request."""

    rgb: np.ndarray


@dataclass
class HealthJob:
    """A health request."""


Job = Union[EditJob, MasksJob, HealthJob]

ROUTES = {"/healthz": "GET", "/edit": "POST", "/masks": "POST"}


# ------------------------------------------------------------------------------------------------ pieces
def check_auth(headers: Mapping[str, str], token: str | None) -> None:
    """ApiError 401 unless `token` is unset or the headers carry `Authorization: Bearer <token>` (compared in
    constant time)."""
    if not token:
        return
    got = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
    scheme, _, value = got.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, "missing bearer token (send the header Authorization: Bearer <token>)")
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "invalid bearer token")


def check_size(nbytes: int, max_bytes: int) -> None:
    """ApiError 413 when a body of `nbytes` exceeds `max_bytes`."""
    if nbytes > max_bytes:
        raise ApiError(413, f"request body of {nbytes / (1 << 20):.1f} MiB exceeds the limit of "
                            f"{max_bytes / (1 << 20):.1f} MiB")


def _one(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    vals = query.get(name)
    if not vals:
        return None
    if len(vals) > 1:
        raise ApiError(400, f"parameter {name} given {len(vals)} times")
    return vals[0]


def parse_bool(name: str, text: str) -> bool:
    t = text.strip().lower()
    if t in TRUE_WORDS:
        return True
    if t in FALSE_WORDS:
        return False
    raise ApiError(400, f"{name} must be 0 or 1 (or true/false), got {text!r}")


def _converted(query: Mapping[str, Sequence[str]], name: str, convert, default, kind: str):
    """One query parameter through `convert` (int, float), `default` when absent; ApiError 400 when it fails."""
    text = _one(query, name)
    if text is None:
        return default
    try:
        return convert(text)
    except ValueError:
        raise ApiError(400, f"{name} must be {kind}, got {text!r}") from None


def parse_edit_params(query: Mapping[str, Sequence[str]], rois: Sequence[str]) -> EditParams:
    """Validate the query parameters of /edit (ApiError 400 names the first bad one)."""
    known = {"roi", "seed", "strength", "noise", "output", "frame", "faces"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r} (use {', '.join(sorted(known))})")
    roi = _one(query, "roi")
    if roi is None:
        raise ApiError(400, f"missing parameter roi (choose from {', '.join(rois)})")
    if roi not in rois:
        raise ApiError(400, f"unknown roi {roi!r} (choose from {', '.join(rois)})")
    seed = _converted(query, "seed", int, 0, "an integer")
    if not 0 <= seed <= MAX_SEED:
        raise ApiError(400, f"seed must be in [0, 2^63), got {seed}")
    strength = _converted(query, "strength", float, 1.0, "a number")
    if not math.isfinite(strength):
        raise ApiError(400, f"strength must be a finite number, got {_one(query, 'strength')!r}")
    if abs(strength) > MAX_STRENGTH:
        raise ApiError(400, f"strength must be in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}], got {strength:g}")
    choice = {}
    for name, default in (("noise", "region"), ("output", "photo"), ("frame", "face"), ("faces", "largest")):
        v = _one(query, name)
        choice[name] = default if v is None else v
        why = choice_problem(name, choice[name])
        if why:
            raise ApiError(400, why)
    return EditParams(roi, seed, strength, **choice)


def decode_image(body: bytes) -> np.ndarray:
    """Request body -> uint8 RGB (H, W, 3); ApiError 400 when it is not a decodable image."""
    if not body:
        raise ApiError(400, "empty request body (send the image file as the body)")
    try:
        return load_image(bytes(body))
    except ImageError as e:
        raise ApiError(400, str(e).replace("image bytes", "the request body", 1)) from None
    except Image.DecompressionBombError as e:
        raise ApiError(400, f"image too large to decode: {e}") from None
    except MemoryError:
        raise ApiError(413, "image too large to decode in memory") from None


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """PNG encoding of a PIL image or a uint8 array (fast compression: the client wants it now)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_png_b64(mask: np.ndarray) -> str:
    """float mask in [0, 1] -> base64 of an 8-bit greyscale PNG."""
    m = np.round(np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return base64.b64encode(png_bytes(m)).decode("ascii")


def decode_mask_b64(text: str) -> np.ndarray:
    """Inverse of `mask_png_b64`: float32 in [0, 1] (8-bit levels)."""
    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def timing_headers(timings: Mapping[str, float], batch_size: int | None = None) -> dict[str, str]:
    """`Server-Timing` (the standard header: `stage;dur=ms, ...`) and `X-SSAE-Timings` (the same as JSON)."""
    clean = {k: round(float(v), 3) for k, v in timings.items()}
    headers = {"Server-Timing": ", ".join(f"{k};dur={v}" for k, v in clean.items()),
               "X-SSAE-Timings": json.dumps(clean, separators=(",", ":"))}
    if batch_size is not None:
        headers["X-SSAE-Batch-Size"] = str(int(batch_size))
    return headers


# ------------------------------------------------------------------------------------------------ the API
class Api:
    """Parses requests into jobs and renders results; holds no model (see `ssae.runtime.serve.engine.Engine`)."""

    def __init__(self, config: ApiConfig, rois: Sequence[str]):
        self.config = config
        self.rois = tuple(rois)

    def route(self, req: Request) -> str:
        """The route name ("healthz", "edit", "masks"); ApiError 404/405 otherwise."""
        path = "/" + req.path.strip("/") if req.path.strip("/") else "/"
        method = ROUTES.get(path)
        if method is None:
            raise ApiError(404, f"no such endpoint {req.path!r} (GET /healthz, POST /edit, POST /masks)")
        if req.method != method:
            raise ApiError(405, f"{path} takes {method}, not {req.method}")
        return path.lstrip("/")

    def precheck(self, req: Request, declared_length: int | None = None) -> str:
        """Checks that need no body (route, auth, declared size): lets a server refuse before reading the body
        (an unauthenticated body is never read). Returns the route name; raises ApiError."""
        name = self.route(req)
        if name != "healthz":
            check_auth(req.headers, self.config.token)
            if declared_length is not None:
                check_size(declared_length, self.config.max_body_bytes)
        return name

    def authorized(self, req: Request) -> bool:
        """Whether the request may see more than "the server is up" (no token set, or the right one sent)."""
        try:
            check_auth(req.headers, self.config.token)
            return True
        except ApiError:
            return False

    def parse(self, req: Request) -> Job | Response:
        """A job to run, or the error Response to send."""
        try:
            name = self.precheck(req)
            if name == "healthz":
                return HealthJob() if self.authorized(req) else Response.json(200, {"status": "ok"})
            check_size(len(req.body), self.config.max_body_bytes)
            if name == "edit":
                params = parse_edit_params(req.query, self.rois)
                return EditJob(decode_image(req.body), params)
            if req.query:
                raise ApiError(400, f"/masks takes no parameters, got {', '.join(sorted(req.query))}")
            return MasksJob(decode_image(req.body))
        except ApiError as e:
            return Response.error(e.status, e.message)

    @staticmethod
    def render_edit(image: Image.Image, timings: Mapping[str, float], batch_size: int | None = None) -> Response:
        return Response(200, png_bytes(image), "image/png", timing_headers(timings, batch_size))

    @staticmethod
    def render_masks(masks: Mapping[str, np.ndarray], timings: Mapping[str, float] | None = None) -> Response:
        first = next(iter(masks.values()))
        body = {"masks": {k: mask_png_b64(v) for k, v in masks.items()},
                "height": int(first.shape[0]), "width": int(first.shape[1])}
        return Response.json(200, body, timing_headers(timings or {}))

    @staticmethod
    def render_health(info: Mapping) -> Response:
        return Response.json(200, {"status": "ok", **info})

    @staticmethod
    def render_failure(exc: BaseException) -> Response:
        """The response for an exception raised while running a job: 400 for a problem with the request that only
        the model could detect (`is_client_error`: a bad image, no face, a parameter the model refuses), 500 for
        anything else, with no detail (the server logs it: see `handle`). One line, no traceback, no path."""
        if isinstance(exc, ApiError):
            return Response.error(exc.status, exc.message)
        if is_client_error(exc):
            return Response.error(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return Response.error(500, "internal error (logged on the server)")


def is_client_error(exc: BaseException) -> bool:
    """A failure caused by the request (answered 400), not by the server (500, logged)."""
    from ssae.errors import ParamError
    from ssae.runtime.images import ImageError
    return isinstance(exc, (ApiError, ImageError, ParamError))
