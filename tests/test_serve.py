"""ssae.runtime.serve without Ray: the HTTP API (parsing, errors, auth, limits) end to end on loopback with the
standard-library server, the client (retries), the encode cache, the batched engine, edit-batch (--local), the
Serve config file and the Triton model repository. tests/test_serve_ray.py runs the same API on Ray Serve."""
from __future__ import annotations

import importlib.util
import io
import json
import time
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssae.runtime.serve import Client, ServeError
from ssae.runtime.serve.api import (Api, ApiConfig, ApiError, EditJob, EditParams, HealthJob, MasksJob, Request, Response,
                            check_auth, check_size, parse_edit_params, timing_headers)
from ssae.runtime.serve.cache import EncodeCache, attach, nbytes_of

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "ssae" / "assets" / "example_face.jpg"
ROIS = ("hair", "skin", "nose", "eyes", "lips")


def ssae(*args, env=None, timeout=600):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ssae.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e)


def cli(capsys, *args) -> tuple[int, str, str]:
    """`ssae ARGS` in this process (cheaper than a subprocess for the error paths): exit code, stdout, stderr."""
    from ssae.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def face_rgb(size=None) -> np.ndarray:
    im = Image.open(FACE).convert("RGB")
    return np.asarray(im.resize((size, size)) if size else im)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def editor_factory(tiny_export):
    from ssae.runtime import Editor
    return lambda: Editor.load(tiny_export, backend="onnxruntime")


# ------------------------------------------------------------------------------------------------ api (pure)
def test_edit_params_are_validated_with_one_line_errors():
    p = parse_edit_params({"roi": ["lips"], "seed": ["7"], "strength": ["0.5"], "noise": ["pixel"],
                           "output": ["raw"], "frame": ["whole"], "faces": ["all"]}, ROIS)
    assert p == EditParams("lips", 7, 0.5, "pixel", output="raw", frame="whole", faces="all")
    assert parse_edit_params({"roi": ["hair"]}, ROIS) == EditParams("hair", 0, 1.0, "region")
    bad = {
        "unknown roi 'beard'": {"roi": ["beard"]},
        "missing parameter roi": {},
        "strength must be a number": {"roi": ["hair"], "strength": ["abc"]},
        "strength must be a finite number": {"roi": ["hair"], "strength": ["nan"]},
        "seed must be an integer": {"roi": ["hair"], "seed": ["1.5"]},
        "seed must be in": {"roi": ["hair"], "seed": ["-1"]},
        "noise must be one of": {"roi": ["hair"], "noise": ["perlin"]},
        "output must be one of": {"roi": ["hair"], "output": ["sharp"]},
        "noise must be one of region, pixel, got ''": {"roi": ["hair"], "noise": [""]},
        "strength must be in [-10, 10]": {"roi": ["hair"], "strength": ["1e6"]},
        "frame must be one of": {"roi": ["hair"], "frame": [""]},
        "given 2 times": {"roi": ["hair", "lips"]},
        "unknown parameter 'color'": {"roi": ["hair"], "color": ["red"]},
    }
    for msg, q in bad.items():
        with pytest.raises(ApiError) as ei:
            parse_edit_params(q, ROIS)
        assert ei.value.status == 400 and msg in ei.value.message and "\n" not in ei.value.message


def test_auth_size_routes_and_error_bodies():
    check_auth({}, None)
    check_auth({"Authorization": "Bearer s3cret"}, "s3cret")
    check_auth({"authorization": "bearer s3cret"}, "s3cret")
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"},
                    {"Authorization": "Bearer"}):
        with pytest.raises(ApiError) as ei:
            check_auth(headers, "s3cret")
        assert ei.value.status == 401
    check_size(100, 100)
    with pytest.raises(ApiError) as ei:
        check_size(101, 100)
    assert ei.value.status == 413

    api = Api(ApiConfig(max_image_mb=0.001, token="t"), ROIS)
    auth = {"Authorization": "Bearer t"}
    assert api.parse(Request("GET", "/healthz")).json_body() == {"status": "ok"}  # health needs no token: "up"
    cases = [(Request("GET", "/nothing"), 404), (Request("GET", "/edit", headers=auth), 405),
             (Request("POST", "/edit", {"roi": ["hair"]}, {}, png(face_rgb(16))), 401),
             (Request("POST", "/edit", {"roi": ["hair"]}, auth, b"x" * 2000), 413),
             (Request("POST", "/edit", {"roi": ["hair"]}, auth, b"not an image"), 400),
             (Request("POST", "/edit", {"roi": ["hair"]}, auth, b""), 400),
             (Request("POST", "/masks", {"roi": ["hair"]}, auth, png(face_rgb(16))), 400)]
    for req, status in cases:
        r = api.parse(req)
        assert isinstance(r, Response) and r.status == status, (req.path, r)
        body = r.json_body()
        assert set(body) == {"error"} and body["error"] and "Traceback" not in body["error"]
    job = api.parse(Request.from_target("POST", "/edit?roi=nose&seed=3", auth, png(face_rgb(16))))
    assert isinstance(job, EditJob) and job.params.roi == "nose" and job.rgb.shape == (16, 16, 3)
    assert isinstance(api.parse(Request("POST", "/masks/", headers=auth, body=png(face_rgb(16)))), MasksJob)
    from ssae.errors import ParamError
    from ssae.runtime.images import ImageError
    assert api.render_failure(ParamError("bad\nsecond line")).json_body() == {"error": "bad"}
    assert api.render_failure(ImageError("no face found in the photo")).status == 400
    for exc in (RuntimeError("boom"), ValueError("/srv/models/x.onnx: shape mismatch"), MemoryError()):
        r = api.render_failure(exc)                      # server faults: 500, no detail, no path
        assert r.status == 500 and r.json_body()["error"] == "internal error (logged on the server)"
    # /healthz: without the token only "up"; with it, the details
    assert api.parse(Request("GET", "/healthz")).json_body() == {"status": "ok"}
    assert isinstance(api.parse(Request("GET", "/healthz", headers=auth)), HealthJob)
    h = timing_headers({"sae_encoder": 1.23456, "total": 5.0}, batch_size=3)
    assert h["Server-Timing"] == "sae_encoder;dur=1.235, total;dur=5.0" and h["X-SSAE-Batch-Size"] == "3"
    assert json.loads(h["X-SSAE-Timings"]) == {"sae_encoder": 1.235, "total": 5.0}


# ------------------------------------------------------------------------------------------------ cache
def test_encode_cache_is_an_lru_bounded_by_bytes():
    c = EncodeCache(max_bytes=3000)
    c["a"] = np.zeros(1000, np.uint8)
    c["b"] = np.zeros(1000, np.uint8)
    assert c.get("a") is not None and c.get("zz") is None           # a is now the most recent
    c["c"] = np.zeros(1500, np.uint8)                                # 3500 > 3000: evict the LRU (b)
    assert c.keys() == ["a", "c"] and c.nbytes == 2500
    c["a"] = {"x": np.zeros(5000, np.uint8)}                         # grows beyond the bound alone: kept
    assert c.keys() == ["a"] and c.stats().entries == 1
    s = c.stats().to_dict()
    assert (s["hits"], s["misses"], s["evictions"], s["hit_rate"]) == (1, 1, 2, 0.5)
    with pytest.raises(ValueError):
        EncodeCache(0)


def test_second_edit_of_the_same_image_skips_the_encoder(editor_factory):
    ed = editor_factory()
    cache = attach(ed, EncodeCache(64 << 20))
    img = face_rgb()
    r1 = ed.edit(img, roi="hair", seed=1)
    r2 = ed.edit(img.copy(), roi="hair", seed=2)       # same content, another array: found by content hash
    assert "sae_encoder" in r1.timings and "sae_decoder_prefix" in r1.timings
    assert "sae_encoder" not in r2.timings and "sae_decoder_prefix" not in r2.timings and "smpn_hair" not in r2.timings
    assert r2.timings.get("cache_hit") == 1.0
    st = cache.stats()
    assert (st.hits, st.misses, st.entries) == (1, 1, 1)
    assert st.bytes == nbytes_of(cache[cache.keys()[0]]) and st.bytes > img.nbytes
    # a budget of about one entry: a new image evicts the old one (by bytes, not by count)
    ed2 = editor_factory()
    small = attach(ed2, EncodeCache(st.bytes + 1))
    ed2.edit(img, roi="hair", seed=1)
    ed2.edit(np.ascontiguousarray(img[:, ::-1]), roi="hair", seed=1)
    small.trim()
    assert len(small) == 1 and small.stats().evictions == 1
    assert "sae_encoder" in ed2.edit(img, roi="hair", seed=3).timings   # evicted: encoded again


# ------------------------------------------------------------------------------------------------ engine
def test_batched_engine_matches_single_edits_and_isolates_failures(editor_factory):
    from ssae.runtime.serve.engine import EditOutcome, Engine

    a, b = face_rgb(), np.ascontiguousarray(face_rgb(140)[:, ::-1])
    jobs = [EditJob(a, EditParams("hair", 1)), EditJob(b, EditParams("lips", 2, 0.7, "region")),
            EditJob(a, EditParams("hair", 3, 1.5)), EditJob(a, EditParams("bogus", 1)),
            EditJob(b, EditParams("nose", 4, 1.0, "pixel"))]
    eng = Engine(editor_factory(), cache_mb=64)
    out = eng.edit_batch(jobs)
    assert isinstance(out[3], ValueError) and "unknown ROI" in str(out[3])
    for job, res in zip(jobs, out):
        if job.params.roi == "bogus":
            continue
        assert isinstance(res, EditOutcome) and res.batch_size == len(jobs)
        ref = editor_factory().edit(job.rgb, roi=job.params.roi, seed=job.params.seed, strength=job.params.strength,
                                    noise=job.params.noise)
        assert res.image.size == ref.image.size == (job.rgb.shape[1], job.rgb.shape[0])
        assert np.array_equal(np.asarray(res.image), np.asarray(ref.image))
    h = eng.health()
    assert h["requests"] == 5 and h["batches"] == 1 and h["cache"]["misses"] == 2 and h["cache"]["entries"] == 2
    # re-edits of both images in one batch take the windowed path (the tiny model's random SMPN masks cover the
    # whole image, so give both images small masks): still what a fresh Editor computes on the full image
    sq = np.zeros((1, 1, 32, 32), np.float32)
    sq[..., 9:17, 11:20] = np.round(np.linspace(0.2, 1.0, 9) * 255) / 255
    for ph in eng.cache._data.values():
        ph.crops[0].masks.update(lips=sq, nose=np.roll(sq, 1, axis=-2), eyes=np.roll(sq, 1, axis=-1))
    again = [EditJob(a, EditParams("lips", 11)), EditJob(b, EditParams("nose", 12, 0.8)),
             EditJob(b, EditParams("eyes", 13, 1.0, "pixel"))]
    assert eng.editor._window(np.concatenate([sq, np.roll(sq, 1, axis=-2), np.roll(sq, 1, axis=-1)])) is not None
    for job, res in zip(again, eng.edit_batch(again)):
        assert "sae_encoder" not in res.timings
        ref_ed = editor_factory()
        ref_ed.masks(job.rgb)                                    # encode, then give it the same small masks
        next(iter(ref_ed._cache.values())).crops[0].masks.update(lips=sq, nose=np.roll(sq, 1, axis=-2),
                                                        eyes=np.roll(sq, 1, axis=-1))
        ref = ref_ed.edit(job.rgb, roi=job.params.roi, seed=job.params.seed, strength=job.params.strength,
                          noise=job.params.noise)
        assert np.array_equal(np.asarray(res.image), np.asarray(ref.image))
    one = eng.edit_batch([EditJob(a, EditParams("hair", 9))])[0]
    assert one.batch_size == 1 and "sae_encoder" not in one.timings


# ------------------------------------------------------------------------------------------------ HTTP end to end
@pytest.fixture(scope="module")
def local_server(editor_factory):
    from ssae.runtime.serve.engine import Engine
    from ssae.runtime.serve.local import LocalServer

    with LocalServer(Engine(editor_factory(), cache_mb=64), ApiConfig(max_image_mb=0.5, token="s3cret")) as srv:
        yield srv


def raw(url, method, target, body=None, token="s3cret"):
    import urllib.error
    import urllib.request
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url + target, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def test_http_api_status_codes_and_the_server_keeps_serving(local_server, editor_factory):
    url = local_server.url
    assert url.startswith("http://127.0.0.1:")
    face = FACE.read_bytes()
    status, headers, body = raw(url, "POST", "/edit?roi=hair&seed=3&strength=1.0", face)
    assert status == 200 and headers["Content-Type"] == "image/png"
    img = Image.open(io.BytesIO(body))
    assert img.size == (250, 250)
    ref = editor_factory().edit(str(FACE), roi="hair", seed=3)
    assert np.abs(np.asarray(img.convert("RGB"), int) - np.asarray(ref.image, int)).max() <= 1
    assert "sae_decoder_edit" in json.loads(headers["X-SSAE-Timings"]) and "dur=" in headers["Server-Timing"]

    errors = [("POST", "/edit?roi=hair", b"\x89PNG\r\n\x1a\n garbage", "s3cret", 400, "corrupt or truncated"),
              ("POST", "/masks", b"hello", "s3cret", 400, "the request body is not an image"),
              ("POST", "/edit?roi=beard", face, "s3cret", 400, "unknown roi"),
              ("POST", "/edit?roi=hair&strength=abc", face, "s3cret", 400, "strength must be a number"),
              ("POST", "/edit?roi=hair", face, None, 401, "missing bearer token"),
              ("POST", "/edit?roi=hair", face, "wrong", 401, "invalid bearer token"),
              ("POST", "/edit?roi=hair", b"\0" * (600 << 10), "s3cret", 413, "exceeds the limit"),
              ("GET", "/nothing", None, "s3cret", 404, "no such endpoint"),
              ("GET", "/edit", None, "s3cret", 405, "takes POST")]
    for method, target, data, token, code, msg in errors:
        status, headers, body = raw(url, method, target, data, token)
        assert status == code, (target, body)
        assert headers["Content-Type"] == "application/json"
        err = json.loads(body)
        assert list(err) == ["error"] and msg in err["error"] and "Traceback" not in err["error"]
    status, _, body = raw(url, "POST", "/edit?roi=hair&seed=4", face)      # still serving
    assert status == 200 and Image.open(io.BytesIO(body)).size == (250, 250)
    status, _, body = raw(url, "GET", "/healthz", token=None)
    assert status == 200 and json.loads(body) == {"status": "ok"}         # without the token: only "up"
    status, _, body = raw(url, "GET", "/healthz")
    h = json.loads(body)
    assert status == 200 and h["status"] == "ok" and h["rois"] == list(ROIS)
    assert h["cache"]["misses"] == 1 and h["cache"]["hits"] >= 1


def test_client_edit_masks_healthz_and_errors(local_server, editor_factory):
    c = Client(local_server.url, token="s3cret")
    assert c.healthz()["status"] == "ok"
    out = c.edit(FACE, roi="lips", seed=5, strength=1.2)
    ref = editor_factory().edit(str(FACE), roi="lips", seed=5, strength=1.2)
    assert out.size == (250, 250) and np.abs(np.asarray(out, int) - np.asarray(ref.image, int)).max() <= 1
    assert c.last_timings["total"] > 0
    arr = face_rgb(160)
    assert c.edit(arr, roi="nose", seed=1).size == (160, 160)                    # arrays are sent as PNG
    masks = c.masks(Image.fromarray(arr))
    want = editor_factory().masks(arr)
    assert set(masks) == set(ROIS) and masks["hair"].shape == (160, 160)
    assert max(np.abs(masks[r] - want[r]).max() for r in ROIS) <= 1 / 255 + 1e-6
    with pytest.raises(ServeError) as ei:
        c.edit(b"not an image", roi="hair")
    assert ei.value.status == 400 and "not an image" in ei.value.message
    with pytest.raises(ServeError) as ei:
        Client(local_server.url, token="bad").edit(FACE)
    assert ei.value.status == 401 and c.retried == 0                          # 4xx: no retries


def _reply(handler, status: int, obj, headers=None) -> None:
    """A JSON answer from a test server's handler."""
    body = json.dumps(obj).encode()
    handler.send_response(status)
    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body)


class _Flaky(BaseHTTPRequestHandler):
    """503 for the first `fail` requests, then a health answer."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.seen += 1
        ok = self.server.seen > self.server.fail
        _reply(self, 200 if ok else 503, {"status": "ok"} if ok else {"error": "replica restarting"})

    def log_message(self, *a):
        pass


def test_client_retries_only_503_and_connection_failures_within_a_deadline():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    srv.seen, srv.fail = 0, 2
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        c = Client(url, retries=3, backoff=0.01)
        assert c.healthz() == {"status": "ok"} and c.retried == 2 and srv.seen == 3
        srv.seen, srv.fail = 0, 10
        with pytest.raises(ServeError) as ei:
            Client(url, retries=2, backoff=0.01).healthz()
        assert ei.value.status == 503 and "after 3 attempts" in str(ei.value) and srv.seen == 3
    finally:
        srv.shutdown()
        srv.server_close()
    c = Client(url, retries=2, backoff=0.01)                                  # nothing listens there now
    with pytest.raises(ServeError) as ei:
        c.healthz()
    assert ei.value.status is None and c.retried == 2
    c = Client(url, retries=50, backoff=0.2, backoff_max=0.2, deadline=0.5)  # the deadline stops the retries
    t0 = time.monotonic()
    with pytest.raises(ServeError):
        c.healthz()
    assert time.monotonic() - t0 < 2 and c.retried <= 4


class _Status(BaseHTTPRequestHandler):
    """Answers every GET with the server's `status` (and, for 3xx, a Location), recording Authorization."""

    def do_GET(self):
        self.server.seen.append(self.headers.get("Authorization"))
        st = self.server.status
        _reply(self, st, {"status": "ok"} if st == 200 else {"error": "no"},
               {"Location": self.server.location} if 300 <= st < 400 else {})

    def log_message(self, *a):
        pass


def _status_server(status, location=""):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    srv.status, srv.location, srv.seen = status, location, []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_client_does_not_retry_500_and_keeps_the_token_on_its_host():
    bad = _status_server(500)
    other = _status_server(200)                           # "another host": another port
    same = _status_server(200)
    try:
        c = Client(f"http://127.0.0.1:{bad.server_address[1]}", token="t0k", retries=3, backoff=0.01)
        with pytest.raises(ServeError) as ei:
            c.healthz()
        assert ei.value.status == 500 and c.retried == 0 and len(bad.seen) == 1
        away = _status_server(302, f"http://127.0.0.1:{other.server_address[1]}/healthz")
        home = _status_server(307, f"http://127.0.0.1:{same.server_address[1]}/healthz")
        assert Client(f"http://127.0.0.1:{away.server_address[1]}", token="t0k").healthz() == {"status": "ok"}
        assert away.seen == ["Bearer t0k"] and other.seen == [None]          # dropped on the way to another host
        away.shutdown()
        home.shutdown()
    finally:
        for srv in (bad, other, same):
            srv.shutdown()
            srv.server_close()


def test_local_server_limits_chunked_bodies_and_never_reads_unauthenticated_ones(editor_factory):
    import http.client
    from ssae.runtime.serve.engine import Engine
    from ssae.runtime.serve.local import LocalServer, warn_if_open
    eng = Engine(editor_factory(), cache_mb=16)
    with LocalServer(eng, ApiConfig(max_image_mb=0.01, token="s3cret")) as srv:
        port = int(srv.url.rsplit(":", 1)[1])

        def chunked(headers, chunks):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.putrequest("POST", "/edit?roi=hair")
            for k, v in {"Transfer-Encoding": "chunked", **headers}.items():
                conn.putheader(k, v)
            conn.endheaders()
            try:
                for c in chunks:
                    conn.send(b"%x\r\n%s\r\n" % (len(c), c))
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = conn.getresponse()
            out = (r.status, json.loads(r.read()))
            conn.close()
            return out

        status, body = chunked({"Authorization": "Bearer s3cret"}, [b"x" * 4000] * 5)   # 20 kB > 10 kB
        assert status == 413 and "exceeds the limit" in body["error"]
        status, body = chunked({}, [b"x" * 100])                                            # no token: 401 first
        assert status == 401
        status, body = chunked({"Authorization": "Bearer s3cret"}, [png(face_rgb(60))[:100]])
        assert status == 400                                                               # read, then refused
    assert warn_if_open("0.0.0.0", None) and not warn_if_open("0.0.0.0", "t") and not warn_if_open("127.0.0.1", None)


# ------------------------------------------------------------------------------------------------ edit-batch
def _faces(folder: Path) -> None:
    folder.mkdir(parents=True)
    shutil.copy(FACE, folder / "a.jpg")
    Image.fromarray(face_rgb(140)).save(folder / "b.png")
    (folder / "sub").mkdir()
    Image.fromarray(np.ascontiguousarray(face_rgb(110)[:, ::-1])).save(folder / "sub" / "c.png")
    (folder / "broken.jpg").write_bytes(FACE.read_bytes()[:300])             # truncated JPEG
    (folder / "notes.txt").write_text("not an image, not an input")


def test_edit_batch_local_writes_skips_and_lists_unreadable_inputs(tmp_path, tiny_export):
    src, out = tmp_path / "in", tmp_path / "out"
    _faces(src)
    args = ("edit-batch", src, out, "--roi", "hair", "lips", "--seeds", "0-1", "--model", tiny_export,
            "--backend", "onnxruntime", "--local", "--batch-size", "2")
    r = ssae(*args)
    assert r.returncode == 1, r.stderr                                        # some inputs failed
    rep = json.loads(r.stdout)
    assert (rep["inputs"], rep["written"], rep["skipped"], rep["failed"]) == (4, 12, 0, 1)
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    job = names[0].rsplit("_", 1)[1][:-4]
    assert len(job) == 8 and names == sorted(
        [f"{s}_{roi}_seed{k}_{job}.png" for s in ("a.jpg", "b.png") for roi in ("hair", "lips") for k in (0, 1)]
        + [f"sub/c.png_{roi}_seed{k}_{job}.png" for roi in ("hair", "lips") for k in (0, 1)])
    assert Image.open(out / f"a.jpg_hair_seed1_{job}.png").size == (250, 250)
    assert Image.open(out / "sub" / f"c.png_lips_seed0_{job}.png").size == (110, 110)
    errs = json.loads((out / "edit-batch-errors.json").read_text())
    assert errs["failed"] == 1 and errs["errors"][0]["path"].endswith("broken.jpg")
    assert "corrupt or truncated" in errs["errors"][0]["error"] and "unreadable:" in r.stderr
    assert not list(out.rglob("*.tmp"))

    mtime = (out / f"a.jpg_hair_seed0_{job}.png").stat().st_mtime_ns
    (out / f"b.png_lips_seed1_{job}.png").unlink()                            # resume: only the missing one
    r = ssae(*args)
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and (rep["written"], rep["skipped"], rep["failed"]) == (1, 11, 1)
    assert (out / f"b.png_lips_seed1_{job}.png").exists()
    assert (out / f"a.jpg_hair_seed0_{job}.png").stat().st_mtime_ns == mtime
    r = ssae(*args, "--strength", "0.5")                                      # other settings: a job of its own
    rep = json.loads(r.stdout)
    assert (rep["written"], rep["skipped"]) == (12, 0) and len(list(out.rglob("*.png"))) == 24


def test_edit_batch_names_are_unique_per_input(tmp_path, tiny_export):
    """Inputs whose stems, extensions or case collide each get their own outputs; a photo without a face and a
    decompression bomb go to the error list and the job finishes."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in ("a.png", "a.jpg", "a_png.jpg", "b.JPG", "b.jpg"):
        Image.fromarray(face_rgb(150)).save(src / n, format="PNG" if n.endswith("png") else "JPEG")
    Image.new("RGB", (80, 60), (20, 90, 200)).save(src / "flat.png")
    Image.new("1", (14000, 14000)).save(src / "bomb.png")
    r = ssae("edit-batch", src, out, "--roi", "lips", "--model", tiny_export, "--backend", "onnxruntime", "--local")
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and (rep["inputs"], rep["written"], rep["failed"]) == (7, 5, 2), r.stdout
    assert len({p.name.lower() for p in out.glob("*.png")}) == 5
    errs = {Path(e["path"]).name: e["error"] for e in json.loads((out / "edit-batch-errors.json").read_text())["errors"]}
    assert "no face found" in errs["flat.png"] and "too large to decode" in errs["bomb.png"]


def test_edit_batch_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for args, msg in [(("--roi", "beard"), "unknown ROI 'beard'"), (("--seeds", "3-1"), "bad seed range"),
                      (("--seeds", "x"), "seeds must look like")]:
        rc, out, err = cli(capsys, "edit-batch", tmp_path / "in", tmp_path / "out", "--local", *args)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    rc, out, err = cli(capsys, "edit-batch", tmp_path / "missing", tmp_path / "out", "--local")
    assert rc == 2 and "input not found" in err
    rc, out, err = cli(capsys, "edit-batch", tmp_path / "in", tmp_path / "in" / "out", "--local")
    assert rc == 2 and "outside the input folder" in err


def test_edit_batch_list_file_and_name_collisions(tmp_path, editor_factory):
    from ssae.runtime.serve.batch import list_inputs, parse_seeds, plan

    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("5,1-2,5") == [5, 1, 2]
    (tmp_path / "x").mkdir()
    for name in ("x/a.jpg", "x/a.png"):
        (tmp_path / name).write_bytes(b"")
    lst = tmp_path / "list.txt"
    lst.write_text("# faces\nx/a.jpg\n\nx/a.png\nx/missing.png\n")
    files, root = list_inputs(lst)
    assert [f.name for f in files] == ["a.jpg", "a.png", "missing.png"] and root == (tmp_path / "x").resolve()
    outs = [o for t in plan(files, root, tmp_path / "o", ["hair"], [0]) for *_, o in t.outputs]
    assert [Path(o).name for o in outs] == ["a.jpg_hair_seed0.png", "a.png_hair_seed0.png", "missing.png_hair_seed0.png"]


# ------------------------------------------------------------------------------------------------ serve config
def test_serve_config_file_is_written_and_read_back(tmp_path, capsys):
    yaml = pytest.importorskip("yaml", reason="PyYAML (the serve extra) is not installed")
    from ssae.runtime.serve.deployment import APP_BUILDER, DEPLOYMENT_NAME, ServeConfig, read_serve_config

    f = tmp_path / "serve.yaml"
    r = ssae("serve", "--config", f, "--autoscale", "1:3", "--max-batch", "4", "--port", "8123",
             "--max-image-mb", "5")
    assert r.returncode == 0, r.stderr
    assert "serve deploy" in r.stdout
    text = f.read_text()
    doc = yaml.safe_load(text)
    app = doc["applications"][0]
    assert doc["http_options"] == {"host": "127.0.0.1", "port": 8123} and app["import_path"] == APP_BUILDER
    dep = app["deployments"][0]
    assert dep["name"] == DEPLOYMENT_NAME and "num_replicas" not in dep
    assert dep["autoscaling_config"]["min_replicas"] == 1 and dep["autoscaling_config"]["max_replicas"] == 3
    assert "SSAE_TOKEN" not in text
    cfg, overrides = read_serve_config(f)
    assert cfg == ServeConfig(port=8123, autoscale=(1, 3), max_batch=4, max_image_mb=5.0)
    assert overrides["autoscaling_config"]["max_replicas"] == 3
    for args, msg in [(("--autoscale", "3:1"), "autoscale"), (("--replicas", "0"), "replicas must be >= 1"),
                      (("--max-batch", "0"), "max batch"), (("--port", "70000"), "port")]:
        rc, out, err = cli(capsys, "serve", "--config", tmp_path / "x.yaml", *args)
        assert rc == 2 and msg in err and not (tmp_path / "x.yaml").exists(), err
    (tmp_path / "bad.yaml").write_text('{"applications": [{"name": "x", "import_path": "other:app"}]}\n')
    rc, out, err = cli(capsys, "serve", "--config", tmp_path / "bad.yaml")
    assert rc == 2 and "no application with import_path" in err and len(err.strip().splitlines()) == 1


def test_serve_config_files_without_pyyaml_name_the_extra(tmp_path, monkeypatch):
    """Without PyYAML (it comes with the serve extra) writing or reading a config file is a one-line
    ServeConfigError (an SSAEError) naming the extra; nothing is written."""
    from ssae.errors import SSAEError
    from ssae.runtime.serve.deployment import ServeConfig, ServeConfigError, read_serve_config, write_serve_config

    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ImportError
    f = tmp_path / "serve.yaml"
    with pytest.raises(ServeConfigError, match=r"pip install 'ssae\[serve\]'") as e:
        write_serve_config(ServeConfig(), f)
    assert isinstance(e.value, SSAEError) and "\n" not in str(e.value) and not f.exists()
    f.write_text("applications: []\n")
    with pytest.raises(ServeConfigError, match="PyYAML"):
        read_serve_config(f)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed here")
def test_commands_that_need_ray_say_so_without_it(tmp_path):
    r = ssae("serve", "--port", "8123")
    assert r.returncode == 2 and "pip install 'ssae[serve]'" in r.stderr and len(r.stderr.splitlines()) == 1
    (tmp_path / "in").mkdir()
    r = ssae("edit-batch", tmp_path / "in", tmp_path / "out")
    assert r.returncode == 2 and "or run with --local" in r.stderr


# ------------------------------------------------------------------------------------------------ Triton
@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory, tiny_export):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
    from ssae.runtime.serve import triton
    out = tmp_path_factory.mktemp("triton") / "repo"
    summary = triton.write_repository(tiny_export, out)
    return out, summary


def test_triton_repository_configs_parse_and_validate(triton_repo):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from ssae.runtime.serve import triton
    repo, summary = triton_repo
    assert summary["ensembles"] == [f"ssae_edit_{r}" for r in ROIS]
    assert "sae_decoder_edit_plugin" in summary["skipped"]
    assert "CPU re-edit" in summary["skipped"]["sae_decoder_edit_sparse"]     # cpu_only: one edit, int64 plans
    names = triton.model_names(repo)
    assert "sae_decoder_edit_sparse" not in names
    assert {"sae_encoder", "sae_decoder_prefix", "sae_decoder_edit", "smpn_hair", "roi_mask_hair",
            "refine_lips", "ssae_edit_eyes"} <= set(names)
    for n in names:
        cfg = text_format.Parse((repo / n / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert cfg.name == n and cfg.max_batch_size == 8
        if cfg.platform != "ensemble":
            assert cfg.backend == "onnxruntime" and cfg.dynamic_batching is not None
            assert cfg.instance_group[0].count == 1 and (repo / n / "1" / "model.onnx").exists()
    edit = triton.parse_config(repo / "sae_decoder_edit" / "config.pbtxt")
    assert [t.name for t in edit.input] == ["h", "skip", "texture", "mask", "noise", "strength"]   # xi baked
    st = edit.input[5]
    assert list(st.dims) == [1] and list(st.reshape.shape) == []
    refine = triton.parse_config(repo / "refine_hair" / "config.pbtxt")
    assert list(refine.input[0].dims) == [3, -1, -1]                                   # dynamic crop dims
    ens = triton.parse_config(repo / "ssae_edit_hair" / "config.pbtxt")
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [
        "smpn_hair", "roi_mask_hair", "sae_encoder", "sae_decoder_prefix", "sae_decoder_edit", "refine_hair"]
    assert triton.validate_repository(repo) == []


def test_triton_validation_catches_broken_wiring(triton_repo, tmp_path):
    from ssae.runtime.serve import triton
    repo = tmp_path / "repo"
    shutil.copytree(triton_repo[0], repo)
    ens = repo / "ssae_edit_hair" / "config.pbtxt"
    good = ens.read_text()
    ens.write_text(good.replace('input_map { key: "strength" value: "strength" }',
                                'input_map { key: "strenght" value: "strength" }'))
    assert any("input_map keys" in p for p in triton.validate_repository(repo))
    ens.write_text(good.replace('output_map { key: "h" value: "h" }', 'output_map { key: "hh" value: "h" }'))
    probs = triton.validate_repository(repo)
    assert any("'hh' is not an output" in p for p in probs) and any("consumes 'h'" in p for p in probs)
    ens.write_text(good.replace("max_batch_size: 8", "max_batch_size: 16"))
    assert any("max_batch_size 8 < the ensemble's 16" in p for p in triton.validate_repository(repo))
    ens.write_text(good.replace("ensemble_scheduling {", "ensemble_scheduling { bogus: 1"))
    assert any("config.pbtxt" in p for p in triton.validate_repository(repo))
    ens.write_text(good)
    enc = repo / "sae_encoder" / "config.pbtxt"
    enc.write_text(enc.read_text().replace("dims: [ 3, 32, 32 ]", "dims: [ 3, 64, 64 ]"))
    assert any("sae_encoder: input image dims [3, 64, 64]" in p for p in triton.validate_repository(repo))


def test_triton_ensemble_computes_what_the_editor_computes(triton_repo, editor_factory):
    from ssae.runtime.serve import triton
    repo, summary = triton_repo
    imgs = [face_rgb(), face_rgb(120)]
    for roi, seeds, strength in (("hair", [3, 4], 1.0), ("lips", [0, 9], 1.4)):
        inputs, fits = triton.prepare_inputs(imgs, seeds, strength, summary["image_size"], summary["global_code_ch"])
        out = triton.run_ensemble(repo, f"ssae_edit_{roi}", inputs)
        zero = triton.run_ensemble(repo, f"ssae_edit_{roi}", dict(inputs, strength=0 * inputs["strength"]))
        assert triton.finish(out["edited"], fits)[0].size == (summary["image_size"],) * 2   # the raw crops
        got = triton.finish(out["edited"], fits, out["mask"], zero["edited"])
        for img, seed, g in zip(imgs, seeds, got):
            ref = editor_factory().edit(img, roi=roi, seed=seed, strength=strength)
            assert g.size == ref.image.size
            assert np.abs(np.asarray(g, int) - np.asarray(ref.image, int)).max() <= 1


def test_triton_repository_adds_tensorrt_plans_when_engines_exist(tiny_export, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
    from ssae.export import trt_build
    from ssae.export.onnx_export import read_manifest
    from ssae.runtime.serve import triton

    # an engine folder as `ssae build` writes it (the plans are placeholders: no GPU here)
    man = read_manifest(tiny_export)
    eng = tmp_path / "engines"
    eng.mkdir()
    engines = {}
    for stage in ("smpn_hair", "sae_encoder", "sae_decoder_prefix", "sae_decoder_edit", "refine_hair"):
        e = man["stages"][stage]
        fname = f"{stage}.0123456789abcdef.engine"
        (eng / fname).write_bytes(b"plan:" + stage.encode())
        (eng / (fname + ".json")).write_text(json.dumps({"format": trt_build.SIDECAR_FORMAT, "stage": stage,
                                                         "inputs": e["inputs"], "outputs": e["outputs"]}))
        engines[stage] = {"file": fname}
    (eng / trt_build.INDEX).write_text(json.dumps({"format": trt_build.INDEX_FORMAT, "max_batch": 4,
                                                   "engines": engines}))
    repo = tmp_path / "repo"
    s = triton.write_repository(tiny_export, repo, triton.TritonOptions(engines=str(eng)))
    assert s["tensorrt_models"] == ["refine_hair_trt", "sae_decoder_prefix_trt", "sae_encoder_trt", "smpn_hair_trt"]
    assert "xi" in s["skipped"]["sae_decoder_edit_trt"]
    cfg = triton.parse_config(repo / "sae_encoder_trt" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert (repo / "sae_encoder_trt" / "1" / "model.plan").read_bytes() == b"plan:sae_encoder"
    ens = triton.parse_config(repo / "ssae_edit_hair_trt" / "config.pbtxt")
    assert [st.model_name for st in ens.ensemble_scheduling.step] == [
        "smpn_hair_trt", "roi_mask_hair", "sae_encoder_trt", "sae_decoder_prefix_trt", "sae_decoder_edit",
        "refine_hair_trt"] and ens.max_batch_size == 4
    assert "ssae_edit_lips_trt" in s["ensembles"]                       # the ROIs without engines mix in ORT
    assert triton.validate_repository(repo) == []


def test_export_format_triton_cli(tiny_export, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
    r = ssae("export", "--format", "triton", tmp_path / "repo", "--model", tiny_export, "--max-batch", "4")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert "ssae_edit_hair" in info["ensembles"] and (tmp_path / "repo" / "ssae_edit_hair" / "config.pbtxt").exists()
    from ssae.runtime.serve import triton
    assert triton.validate_repository(tmp_path / "repo") == []
    for args, msg in [(("--format", "triton", tmp_path / "r2", "--model", tiny_export, "--precision", "fp16"),
                       "convert it first"),
                      (("--format", "triton", tmp_path / "r3", "--model", tiny_export, "--max-batch", "0"),
                       "max batch size"),
                      (("--format", "triton", "--model", tiny_export), "give the output folder"),
                      (("--format", "triton", tmp_path / "r4", "--model", tmp_path / "nothing"), "model not found")]:
        rc, out, err = cli(capsys, "export", *args)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_edit_batch_collects_any_per_image_failure(tmp_path, tiny_export, monkeypatch):
    """Out of memory or a runtime error on one photo goes to the error list; the other photos are written."""
    from ssae.runtime.editor import Editor
    from ssae.runtime.serve.batch import BatchConfig, run_batch
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in ("a", "b", "c"):
        Image.fromarray(face_rgb(150)).save(src / f"{n}.png")
    real = Editor.edit_many
    calls = iter([MemoryError(), RuntimeError("kernel exploded"), None])

    def flaky(self, *a, **kw):
        e = next(calls)
        if e is not None:
            raise e
        return real(self, *a, **kw)

    monkeypatch.setattr(Editor, "edit_many", flaky)
    rep = run_batch(src, out, BatchConfig(rois=("lips",), model=str(tiny_export), backend="onnxruntime", local=True))
    assert (rep.inputs, rep.written, rep.failed) == (3, 1, 2)
    whys = sorted(e["error"] for e in rep.errors)
    assert "out of memory" in whys[0] and "kernel exploded" in whys[1]


def test_local_server_drops_a_client_that_stops_sending(editor_factory, monkeypatch):
    import socket as socketlib
    from ssae.runtime.serve import local
    from ssae.runtime.serve.engine import Engine
    monkeypatch.setattr(local._Handler, "timeout", 0.5)
    with local.LocalServer(Engine(editor_factory(), cache_mb=16)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        s = socketlib.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /edit?roi=hair HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")  # then silence
        t0 = time.monotonic()
        try:
            data = s.recv(1000)
        except ConnectionResetError:
            data = b""
        s.close()
        assert time.monotonic() - t0 < 5 and b"200 OK" not in data   # closed by the server, not answered
