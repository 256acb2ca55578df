"""`ssae serve` on Ray Serve and `ssae edit-batch` on Ray Data, end to end on loopback with the tiny model.

Needs the `serve` extra (ray[serve,data]); skipped with a reason where Ray is not installed (the dev extra leaves it
out: ~750 MB). tests/test_serve.py covers the same API without Ray. One small local Ray instance (2 CPUs, no
dashboard) serves every test of this module."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ssae[serve]')")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ssae[serve]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ssae[serve]')")

from ssae.runtime.serve import Client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "ssae" / "assets" / "example_face.jpg"
TOKEN = "ray-s3cret"

pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ssae_serve_command_writes_then_serves_a_config_file(tiny_export, tmp_path):
    """The CLI end to end: `--config FILE` writes the file, then deploys it; serves until interrupted (first in
    this module: its own Ray instance, before the shared one starts)."""
    import signal
    import urllib.request
    port = free_port()
    env = dict(os.environ, SSAE_TOKEN="cli-token", RAY_ADDRESS="")
    f = tmp_path / "serve.yaml"
    cmd = [sys.executable, "-m", "ssae.cli", "serve", "--config", str(f)]
    r = subprocess.run(cmd + ["--model", str(tiny_export), "--backend", "onnxruntime", "--port", str(port),
                              "--max-batch", "4", "--threads", "1"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and f.exists(), r.stderr
    proc = subprocess.Popen(cmd + ["--num-cpus", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        line = proc.stdout.readline()                                         # printed once every replica is up
        assert f"at {url}" in line and "bearer token required" in line, (line, proc.poll())
        with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
            assert json.loads(r.read())["status"] == "ok"
        assert raw(url, "POST", "/edit?roi=hair", FACE.read_bytes(), token=None)[0] == 401
        img = Client(url, token="cli-token").edit(FACE, roi="eyes", seed=2)
        assert img.size == (250, 250)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err[-2000:]


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    from ray import serve
    serve.shutdown()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def served(ray_local, tiny_export):
    from ssae.runtime.serve.deployment import ServeConfig, start
    cfg = ServeConfig(model=str(tiny_export), backend="onnxruntime", port=free_port(), max_batch=8,
                      batch_wait_ms=150, max_image_mb=0.5, cache_mb=64, threads=1, cpus_per_replica=1)
    start(cfg, token=TOKEN)
    yield f"http://127.0.0.1:{cfg.port}", cfg


def raw(url, method, target, body=None, token=TOKEN):
    import urllib.error
    import urllib.request
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url + target, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_ray_serve_http_api_status_codes(served, tiny_export):
    from ssae.runtime import Editor
    url, cfg = served
    face = FACE.read_bytes()
    status, headers, body = raw(url, "GET", "/healthz", token=None)
    assert status == 200 and json.loads(body) == {"status": "ok"}            # without the token: only "up"
    status, headers, body = raw(url, "GET", "/healthz")
    h = json.loads(body)
    assert status == 200 and h["status"] == "ok" and h["replica"].startswith("SERVE_REPLICA::ssae#SSAEEditor#")
    status, headers, body = raw(url, "POST", "/edit?roi=hair&seed=3&strength=1.0", face)
    assert status == 200 and headers["content-type"] == "image/png" and "sae_decoder_edit" in headers["x-ssae-timings"]
    ref = Editor.load(tiny_export, backend="onnxruntime").edit(str(FACE), roi="hair", seed=3)
    got = Image.open(io.BytesIO(body)).convert("RGB")
    assert got.size == (250, 250) and np.abs(np.asarray(got, int) - np.asarray(ref.image, int)).max() <= 1
    for method, target, data, token, code, msg in [
            ("POST", "/edit?roi=hair", b"GIF89a broken", TOKEN, 400, "not an image"),
            ("POST", "/edit?roi=chin", face, TOKEN, 400, "unknown roi"),
            ("POST", "/edit?roi=hair&strength=abc", face, TOKEN, 400, "strength must be a number"),
            ("POST", "/edit?roi=hair", face, None, 401, "missing bearer token"),
            ("POST", "/masks", face, "nope", 401, "invalid bearer token"),
            ("POST", "/edit?roi=hair", b"\0" * (600 << 10), TOKEN, 413, "exceeds the limit"),
            ("GET", "/other", None, TOKEN, 404, "no such endpoint")]:
        status, headers, body = raw(url, method, target, data, token)
        assert status == code, (target, body[:200])
        err = json.loads(body)
        assert list(err) == ["error"] and msg in err["error"] and "Traceback" not in err["error"]
    c = Client(url, token=TOKEN)
    masks = c.masks(FACE)                                                     # still serving after errors
    assert sorted(masks) == sorted(("hair", "skin", "nose", "eyes", "lips")) and masks["lips"].shape == (250, 250)
    h = c.healthz()
    assert h["cache"]["misses"] >= 1 and h["cache"]["hits"] >= 1 and h["max_batch"] == 8


def test_ray_serve_batches_concurrent_requests(served, tiny_export):
    from ssae.runtime import Editor
    url, _ = served
    imgs = [np.asarray(Image.open(FACE).convert("RGB").resize((40 + 8 * k, 40 + 8 * k))) for k in range(3)]

    def one(k):
        c = Client(url, token=TOKEN)
        im = c.edit(imgs[k % 3], roi=("hair", "lips")[k % 2], seed=k)
        return k, im, int(c.last_headers["x-ssae-batch-size"])

    with ThreadPoolExecutor(8) as pool:
        res = list(pool.map(one, range(8)))
    assert max(b for _, _, b in res) > 1, [b for _, _, b in res]           # requests shared a batched pass
    ed = Editor.load(tiny_export, backend="onnxruntime")
    for k, im, _ in res:
        ref = ed.edit(imgs[k % 3], roi=("hair", "lips")[k % 2], seed=k)
        assert im.size == ref.image.size and np.abs(np.asarray(im, int) - np.asarray(ref.image, int)).max() <= 1


def test_killed_replica_is_restarted_and_clients_retry(served):
    import ray

    from ssae.runtime.serve.deployment import replica_actor_names
    url, _ = served
    c = Client(url, token=TOKEN, retries=30, backoff=0.2, backoff_max=1.0)
    first = c.healthz()["replica"]
    assert replica_actor_names() == [first]
    ray.kill(ray.get_actor(first, namespace="serve"), no_restart=True)  # Serve's controller starts a replacement
    img = c.edit(FACE, roi="nose", seed=1)                                    # retried until the new replica is up
    assert img.size == (250, 250)
    assert c.healthz()["replica"] != first and len(replica_actor_names()) == 1


def _faces(folder: Path) -> None:
    folder.mkdir(parents=True)
    shutil.copy(FACE, folder / "a.jpg")
    Image.open(FACE).convert("RGB").resize((36, 36)).save(folder / "b.png")
    Image.open(FACE).convert("L").resize((20, 28)).save(folder / "c.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


def test_edit_batch_on_ray_data(ray_local, tiny_export, tmp_path):
    from ssae.runtime.serve.batch import BatchConfig, run_batch
    src, out = tmp_path / "in", tmp_path / "out"
    _faces(src)
    cfg = BatchConfig(rois=("hair",), seeds=(0, 1, 2), model=str(tiny_export), backend="onnxruntime", workers=2,
                      batch_size=1, cpus_per_worker=0.5, threads=1, frame="whole")   # small thumbnails: no face
    from ssae.runtime.serve.batch import job_key
    seen = []
    rep = run_batch(src, out, cfg, progress=lambda d, n, r: seen.append(d))
    assert (rep.inputs, rep.written, rep.skipped, rep.failed) == (4, 9, 0, 1)
    assert seen[-1] == 4 and rep.errors[0]["path"].endswith("broken.png")
    assert Image.open(out / f"c.png_hair_seed2_{job_key(cfg)}.png").size == (20, 28)
    errs = json.loads((out / "edit-batch-errors.json").read_text())
    assert errs["failed"] == 1 and "broken.png" in errs["errors"][0]["path"]
    rep = run_batch(src, out, cfg)                                             # resumable: nothing left to write
    assert (rep.written, rep.skipped, rep.failed) == (0, 9, 1)


def test_serve_config_and_options_pass_rays_own_validation():
    from ray.serve.schema import ServeDeploySchema

    from ssae.runtime.serve.deployment import ServeConfig, deployment_class, serve_config
    for cfg in (ServeConfig(replicas=2), ServeConfig(autoscale=(1, 3), max_batch=4, model="/models/x")):
        doc = serve_config(cfg)
        ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else \
            ServeDeploySchema.parse_obj(doc)
        deployment_class().options(**cfg.deployment_options())
