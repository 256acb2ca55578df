"""ssae.runtime.serve: serving beyond one process.

- `api`: the HTTP API (parsing, validation, JSON errors, auth), independent of any web framework
- `cache`: the encode cache shared by a replica's requests (LRU, bounded by bytes)
- `engine`: a replica's Editor and the batched pass over concurrent requests
- `deployment`: Ray Serve deployment (`ssae serve`), Serve config files for `serve deploy`
- `local`: the same API on the standard-library HTTP server (no Ray; tests, single user)
- `client`: `Client(url, token=None)` with retries
- `batch`: `ssae edit-batch` on Ray Data
- `triton`: NVIDIA Triton model repository (`ssae export --format triton`)

Ray is imported only by `deployment` and `batch`, when they start something.
"""
from .client import Client, ServeError  # noqa: F401
