"""A Python client for `ssae serve` (standard library HTTP; retries with backoff).

```python
from ssae.serve import Client
c = Client("http://127.0.0.1:8000", token=None)     # token: sent as Authorization: Bearer <token>
img = c.edit("face.jpg", roi="hair", seed=3, strength=1.0)   # PIL image at the input's size
c.last_timings                                             # ms per stage, from the response headers
masks = c.masks("face.jpg")                                # {"hair": H x W float32 in [0, 1], ...}
c.healthz()                                                # {"status": "ok", "cache": {...}, ...}
```

Connection failures and 5xx answers are retried (`retries` times, exponential backoff with jitter, capped at
`backoff_max` seconds): edits are deterministic, so a retried request gives the same image. 4xx answers raise
`ServeError` at once with the server's one-line message.
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

from ..errors import SSAEError

RETRY_STATUS = (500, 502, 503, 504)


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
        from ..runtime.images import load_image
        image = Image.fromarray(load_image(image))
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"unsupported image input of type {type(image).__name__}")


class Client:
    """Client of one `ssae serve` endpoint."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0, retries: int = 5,
                 backoff: float = 0.2, backoff_max: float = 5.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.last_timings: dict[str, float] = {}
        self.last_headers: dict[str, str] = {}
        self.retried = 0  # requests re-sent so far (connection errors and 5xx)

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

    def _sleep(self, attempt: int) -> None:
        delay = min(self.backoff_max, self.backoff * (2 ** attempt))
        time.sleep(delay * (0.5 + random.random() / 2))

    def _request(self, method: str, target: str, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last, last_status = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                self._sleep(attempt - 1)
            req = urllib.request.Request(self.url + target, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
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
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                    TimeoutError) as e:
                reason = getattr(e, "reason", e)
                last, last_status = f"{type(reason).__name__}: {reason}", None
                continue
        raise ServeError(last_status, f"{method} {self.url}{target.split('?')[0]} failed after {self.retries + 1} "
                               f"attempts: {last}")


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace").strip()
