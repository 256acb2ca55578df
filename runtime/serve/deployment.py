"""`ssae serve` on Ray Serve: the deployment (dynamic batching, health check, replicas or autoscaling) and the
Serve config file for `serve deploy` on a cluster.

Each replica loads one `Engine` (an Editor with its encode cache). Edit requests go through `@serve.batch`: the
requests that reach a replica within `batch_wait_ms` (up to `max_batch`) share one batched pass
(`Engine.edit_batch`); `max_batch=1` turns batching off. The model runs in a worker thread, so `/healthz` and
request parsing stay responsive while a batch runs. Ray is imported only when a deployment is built, so the
config helpers here work without it.

A cluster deploy (`serve deploy serve.yaml`) needs `ssae[serve]` installed on every node; the file names the
application builder `ssae.runtime.serve.deployment:app_builder` and carries this module's `ServeConfig` as its `args`.
A server token is never written to the file: replicas read `SSAE_TOKEN` from their environment (set it on the
nodes, or in the file's `runtime_env` yourself).
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from ssae.errors import SSAEError
from .api import (TOKEN_ENV, Api, ApiConfig, ApiError, EditJob, HealthJob, MasksJob, Request, Response, check_size,
                  is_client_error)
from .engine import EditOutcome, Engine, EngineConfig

log = logging.getLogger("ssae.runtime.serve")

APP_BUILDER = "ssae.runtime.serve.deployment:app_builder"
DEPLOYMENT_NAME = "SSAEEditor"


class ServeConfigError(SSAEError, ValueError):
    """A serving option or config file is unusable (one-line reason)."""


@dataclass
class ServeConfig:
    """Everything `ssae serve` deploys (the CLI flags, and the `args` of a Serve config file)."""

    model: str | None = None                 # None: the bundled model; a checkpoint, export folder or preset
    backend: str = "auto"
    host: str = "127.0.0.1"                  # HTTP bind address (loopback unless you open it on purpose)
    port: int = 8000
    replicas: int = 1                        # fixed replica count, unless `autoscale` is set
    autoscale: tuple[int, int] | None = None  # (min, max) replicas
    max_batch: int = 8                       # dynamic batching: largest batch; 1 = off
    batch_wait_ms: float = 10.0              # how long a replica waits to fill a batch
    max_image_mb: float = 20.0               # request bodies above this are refused (413)
    cache_mb: float = 512.0                  # encode cache per replica
    threads: int = 0                         # intra-op threads per replica (onnxruntime, torch); 0: default
    cpus_per_replica: float = 1.0            # Ray CPUs reserved per replica
    max_ongoing_requests: int = 0            # per replica; 0: 4 x max_batch (at least 8)
    name: str = "ssae"                       # Serve application name
    route_prefix: str = "/"

    def validate(self) -> "ServeConfig":
        if not 0 < self.port < 65536:
            raise ServeConfigError(f"port must be in 1..65535, got {self.port}")
        if self.replicas < 1:
            raise ServeConfigError(f"replicas must be >= 1, got {self.replicas}")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if not 0 <= lo <= hi or hi < 1:
                raise ServeConfigError(f"autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {lo}:{hi}")
        if not 1 <= self.max_batch <= 64:
            raise ServeConfigError(f"max batch must be in 1..64, got {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise ServeConfigError(f"batch wait must be >= 0 ms, got {self.batch_wait_ms}")
        if not self.max_image_mb > 0:
            raise ServeConfigError(f"max image size must be > 0 MB, got {self.max_image_mb}")
        if not self.cache_mb > 0:
            raise ServeConfigError(f"cache size must be > 0 MB, got {self.cache_mb}")
        if self.threads < 0 or self.cpus_per_replica < 0 or self.max_ongoing_requests < 0:
            raise ServeConfigError("threads, CPUs per replica and max ongoing requests must be >= 0")
        if not self.route_prefix.startswith("/"):
            raise ServeConfigError(f"route prefix must start with '/', got {self.route_prefix!r}")
        return self

    @property
    def ongoing(self) -> int:
        return self.max_ongoing_requests or max(8, 4 * self.max_batch)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(self.model, self.backend, self.threads, self.cache_mb)

    def deployment_options(self) -> dict:
        """Options of the Serve deployment (`serve.deployment(...)` / the config file's `deployments` entry)."""
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.ongoing,
            "ray_actor_options": {"num_cpus": self.cpus_per_replica},
            "health_check_period_s": 10.0,
            "health_check_timeout_s": 60.0,
            "graceful_shutdown_timeout_s": 20.0,
        }
        if self.autoscale is not None:
            opts["autoscaling_config"] = {"min_replicas": self.autoscale[0], "max_replicas": self.autoscale[1],
                                          "initial_replicas": max(1, self.autoscale[0]),
                                          "target_ongoing_requests": max(1, self.max_batch)}
        else:
            opts["num_replicas"] = self.replicas
        return opts

    def to_args(self) -> dict:
        """JSON-able form (the `args` of the application builder)."""
        d = asdict(self)
        d["autoscale"] = list(self.autoscale) if self.autoscale else None
        return d

    @classmethod
    def from_args(cls, args: dict) -> "ServeConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ServeConfigError(f"unknown ssae serve option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        d = dict(args)
        if d.get("autoscale") is not None:
            d["autoscale"] = tuple(int(v) for v in d["autoscale"])
        return cls(**d).validate()


def parse_autoscale(text: str) -> tuple[int, int]:
    """"MIN:MAX" -> (min, max)."""
    parts = text.split(":")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise ServeConfigError(f"autoscale must be MIN:MAX (two integers), got {text!r}") from None
    if not 0 <= lo <= hi or hi < 1:
        raise ServeConfigError(f"autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return lo, hi


# ------------------------------------------------------------------------------------------------ config files
def serve_config(cfg: ServeConfig) -> dict:
    """A Serve config (the schema `serve deploy` / `serve run` read) deploying this configuration."""
    dep = {"name": DEPLOYMENT_NAME, **cfg.deployment_options()}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [{"name": cfg.name, "route_prefix": cfg.route_prefix, "import_path": APP_BUILDER,
                          "args": cfg.to_args(), "deployments": [dep]}],
    }


def _yaml():
    """PyYAML (it comes with the serve extra's ray[serve]); ServeConfigError when it is missing."""
    try:
        import yaml
    except ImportError:
        raise ServeConfigError("Serve config files need PyYAML: pip install 'ssae[serve]'") from None
    return yaml


def write_serve_config(cfg: ServeConfig, path: str | os.PathLike) -> Path:
    """Write the Serve config YAML for `cfg` atomically; returns the path."""
    from ssae.fileio import atomic_write
    text = "# ssae serve: deploy with `serve deploy <this file>` (needs ssae[serve] on every node)\n" + \
        _yaml().safe_dump(serve_config(cfg.validate()), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def read_serve_config(path: str | os.PathLike) -> tuple[ServeConfig, dict]:
    """The ServeConfig and the deployment options a config file (written by `write_serve_config`, maybe edited
    since) asks for."""
    p = Path(path)
    yaml = _yaml()
    try:
        text = p.read_text()
    except OSError as e:
        raise ServeConfigError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError and friends
        raise ServeConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    apps = (doc or {}).get("applications") if isinstance(doc, dict) else None
    mine = [a for a in apps or [] if isinstance(a, dict) and a.get("import_path") == APP_BUILDER]
    if not mine:
        raise ServeConfigError(f"{p} has no application with import_path {APP_BUILDER}")
    app = mine[0]
    args = dict(app.get("args") or {})
    http = doc.get("http_options") or {}
    for key in ("host", "port"):
        if key in http:
            args[key] = http[key]
    args["name"] = app.get("name", args.get("name", "ssae"))
    args["route_prefix"] = app.get("route_prefix", args.get("route_prefix", "/"))
    try:
        cfg = ServeConfig.from_args(args)
    except TypeError as e:
        raise ServeConfigError(f"{p}: {e}") from None
    deps = [d for d in app.get("deployments") or [] if d.get("name") == DEPLOYMENT_NAME]
    overrides = {k: v for k, v in (deps[0] if deps else {}).items() if k != "name"}
    return cfg, overrides


# ------------------------------------------------------------------------------------------------ Ray Serve
_CLASS = None


def deployment_class():
    """The Serve deployment class (built on first use: importing Ray is slow)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from ray import serve
    from starlette.responses import Response as StarletteResponse

    @serve.deployment(name=DEPLOYMENT_NAME)
    class SSAEEditor:
        """One replica: the Engine, the API, dynamic batching of edits."""

        def __init__(self, args: dict):
            cfg = ServeConfig.from_args(args)
            self.engine = Engine.load(cfg.engine_config())
            self.engine.editor.backend.warmup()  # load every graph now, not in the first request
            self.api = Api(ApiConfig(cfg.max_image_mb, os.environ.get(TOKEN_ENV) or None), self.engine.rois)
            self.max_batch = cfg.max_batch
            self.batched_edit.set_max_batch_size(cfg.max_batch)
            self.batched_edit.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1000.0)
            try:
                self.replica = serve.get_replica_context().replica_id.to_full_id_str()  # its actor name
            except Exception:  # noqa: BLE001 - outside a replica (tests)
                self.replica = None

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def batched_edit(self, jobs: list[EditJob]) -> list:
            return await asyncio.to_thread(self.engine.edit_batch, jobs)

        async def run(self, req: Request) -> Response:
            try:
                job = await asyncio.to_thread(self.api.parse, req)  # decoding must not block the event loop
                if isinstance(job, Response):
                    return job
                if isinstance(job, HealthJob):
                    return self.api.render_health({**self.engine.health(), "replica": self.replica,
                                                   "max_batch": self.max_batch})
                if isinstance(job, MasksJob):
                    masks = await asyncio.to_thread(self.engine.masks, job.rgb)
                    return await asyncio.to_thread(self.api.render_masks, masks)
                if self.max_batch > 1:
                    out = await self.batched_edit(job)
                else:
                    out = (await asyncio.to_thread(self.engine.edit_batch, [job]))[0]
                if not isinstance(out, EditOutcome):
                    raise out
                return await asyncio.to_thread(self.api.render_edit, out.image, out.timings, out.batch_size)
            except Exception as e:  # noqa: BLE001 - one-line JSON for the client, the traceback in the log
                if not is_client_error(e):
                    log.exception("request %s %s failed", req.method, req.path)
                return self.api.render_failure(e)

        async def __call__(self, request) -> StarletteResponse:
            path = request.url.path
            root = request.scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
            req = Request(request.method, path, parse_qs(request.url.query, keep_blank_values=True),
                          dict(request.headers))
            try:
                declared = request.headers.get("content-length")
                self.api.precheck(req, int(declared) if declared and declared.isdigit() else None)
                body, limit = bytearray(), self.api.config.max_body_bytes
                async for chunk in request.stream():  # the limit holds while reading (chunked bodies too)
                    body += chunk
                    check_size(len(body), limit)
                req.body = bytes(body)
                resp = await self.run(req)
            except ApiError as e:
                resp = Response.error(e.status, e.message)
            return StarletteResponse(resp.body, status_code=resp.status, media_type=resp.content_type,
                                     headers=resp.headers)

        def check_health(self) -> None:
            """Serve's replica health check: the model must be loaded."""
            if self.engine is None:
                raise RuntimeError("model not loaded")

    _CLASS = SSAEEditor
    return _CLASS


def build_app(cfg: ServeConfig, overrides: dict | None = None, token: str | None = None):
    """The Serve application for `cfg` (deployment options from `cfg`, then `overrides` from a config file).
    `token`: passed to the replicas' environment as SSAE_TOKEN (never written to a config file)."""
    cfg.validate()
    opts, ov = cfg.deployment_options(), dict(overrides or {})
    if "autoscaling_config" in ov:
        opts.pop("num_replicas", None)
    if "num_replicas" in ov:
        opts.pop("autoscaling_config", None)
    opts.update(ov)
    if token:
        actor = dict(opts.get("ray_actor_options") or {})
        env = dict((actor.get("runtime_env") or {}).get("env_vars") or {})
        env[TOKEN_ENV] = token
        actor["runtime_env"] = {**(actor.get("runtime_env") or {}), "env_vars": env}
        opts["ray_actor_options"] = actor
    return deployment_class().options(**opts).bind(cfg.to_args())


def app_builder(args: dict):
    """Application builder named by config files (`import_path: ssae.runtime.serve.deployment:app_builder`)."""
    return build_app(ServeConfig.from_args(dict(args or {})))


def start(cfg: ServeConfig, address: str | None = None, overrides: dict | None = None,
          num_cpus: int | None = None, token: str | None = None):
    """Start (or join, with `address`) Ray, start Serve's HTTP proxy on cfg.host:cfg.port and deploy. Returns
    the application's handle once every replica is up."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus, **kw)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    return serve.run(build_app(cfg, overrides, token), name=cfg.name, route_prefix=cfg.route_prefix)


def replica_actor_names(app: str = "ssae") -> list[str]:
    """Names of the running replica actors of an application (namespace "serve"), from the GCS: no dashboard
    needed. `/healthz` reports the answering replica's name as "replica"."""
    import ray
    prefix = f"SERVE_REPLICA::{app}#{DEPLOYMENT_NAME}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a.get("namespace") == "serve" and a["name"].startswith(prefix))

