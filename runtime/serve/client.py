"""A Python client for `ssae serve` (standard library HTTP; retries with backoff).

```python
from ssae.runtime.serve import Client
c = Client("http://127.0.0.1:8000", token=None)     # token: sent as Authorization: Bearer <token>
img = c.edit("face.jpg", roi="hair", seed=3, strength=1.0)   # PIL image at the input's size
c.last_timings                                             # ms per stage, from the response headers
masks = c.masks("face.jpg")                                # {"hair": H x W float32 in [0, 1], ...}
c.healthz()                                                # {"status": "ok", "cache": {...}, ...}
```

Only failures that cost the server nothing are retried: connection failures (refused, reset before an answer) and
503 (no replica free), up to `retries` times with exponential backoff and jitter (capped at `backoff_max`
seconds) and never past `deadline` seconds from the first attempt; edits are deterministic, so a retried request
gives the same image. Other answers (4xx, 500 and other 5xx) and read timeouts raise `ServeError` at once: a
server that failed or is still working on the request is not sent it again. Redirects to another host drop the
Authorization header.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
from PIL import Image

from ssae.errors import SSAEError

RETRY_STATUS = (503,)


class _SameHostAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry the Authorization header to another scheme, host or port."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            a, b = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(new.full_url)
            if (a.scheme, a.hostname, a.port) != (b.scheme, b.hostname, b.port):
                for k in [k for k in new.headers if k.lower() == "authorization"]:
                    del new.headers[k]
                new.unredirected_hdrs.pop("Authorization", None)
        return new


_OPENER = urllib.request.build_opener(_SameHostAuth)


class ServeError(SSAEError, RuntimeError):
    """The server refused a request (status, one-line message), or could not be reached after every retry
    (status None)."""

    def __init__(self, status: int | None, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def image_body(image: Any) -> bytes:
    """Request body for an image: a file's bytes as they are (any format the server decodes), bytes as given,
    a PIL image or an array encoded as PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    if isinstance(image, np.ndarray):
        from ssae.runtime.images import load_image
        image = Image.fromarray(load_image(image))
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"unsupported image input of type {type(image).__name__}")


class Client:
    """Client of one `ssae serve` endpoint."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0, retries: int = 5,
                 backoff: float = 0.2, backoff_max: float = 5.0, deadline: float = 60.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.deadline = deadline
        self.last_timings: dict[str, float] = {}
        self.last_headers: dict[str, str] = {}
        self.retried = 0  # requests re-sent so far (connection failures and 503)

    # ------------------------------------------------------------------------------------------ API
    def edit(self, image: Any, roi: str = "hair", seed: int = 0, strength: float = 1.0, noise: str = "region",
             output: str = "photo", frame: str = "face", faces: str = "largest") -> Image.Image:
        """The edited photo (PIL, RGB, the input's size; output="raw": the model's face crop)."""
        q = {"roi": roi, "seed": int(seed), "strength": repr(float(strength)), "noise": noise, "output": output,
             "frame": frame, "faces": faces}
        status, headers, body = self._request("POST", "/edit?" + urllib.parse.urlencode(q), image_body(image))
        self._timings(headers)
        with Image.open(io.BytesIO(body)) as im:
            return im.convert("RGB")

    def masks(self, image: Any) -> dict[str, np.ndarray]:
        """Soft masks per ROI at the input's size (float32 in [0, 1], 8-bit levels)."""
        from .api import decode_mask_b64
        status, headers, body = self._request("POST", "/masks", image_body(image))
        return {k: decode_mask_b64(v) for k, v in json.loads(body)["masks"].items()}

    def healthz(self) -> dict:
        status, headers, body = self._request("GET", "/healthz", None)
        return json.loads(body)

    # ------------------------------------------------------------------------------------------ transport
    def _timings(self, headers: dict[str, str]) -> None:
        try:
            self.last_timings = json.loads(headers.get("x-ssae-timings", "{}"))
        except json.JSONDecodeError:
            self.last_timings = {}

    def _delay(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)

    def _request(self, method: str, target: str, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last, last_status = "", None
        t0 = time.monotonic()
        attempts = 0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self._delay(attempt - 1)
                if time.monotonic() - t0 + delay > self.deadline:
                    break
                self.retried += 1
                time.sleep(delay)
            attempts += 1
            req = urllib.request.Request(self.url + target, data=body, method=method, headers=headers)
            try:
                with _OPENER.open(req, timeout=self.timeout) as r:
                    hdrs = {k.lower(): v for k, v in r.headers.items()}
                    self.last_headers = hdrs
                    return r.status, hdrs, r.read()
            except urllib.error.HTTPError as e:
                data = e.read()
                msg = _error_message(data) or e.reason
                if e.code in RETRY_STATUS:
                    last, last_status = f"{e.code}: {msg}", e.code
                    continue
                raise ServeError(e.code, msg) from None
            except (socket.timeout, TimeoutError):   # the server may still be working on it: no retry
                raise ServeError(None, f"{method} {self.url}{target.split('?')[0]} timed out after "
                                       f"{self.timeout:g} s") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    raise ServeError(None, f"{method} {self.url}{target.split('?')[0]} timed out after "
                                           f"{self.timeout:g} s") from None
                last, last_status = f"{type(reason).__name__}: {reason}", None
                continue
        raise ServeError(last_status, f"{method} {self.url}{target.split('?')[0]} failed after {attempts} "
                               f"attempts: {last}")


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace").strip()
