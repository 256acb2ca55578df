"""Load test of `ssae serve` on Ray Serve, on loopback only: throughput and latency for 1 and 2 replicas, with
dynamic batching on and off, and a run in which a replica is killed mid-run (Serve restarts it; clients retry).

Each configuration sends a fixed number of edit requests from N concurrent clients (threads, each with its own
`ssae.runtime.serve.Client`) and stops at that count or at its time limit, whichever comes first; the script then shuts
Ray down by itself. The workload re-edits a small pool of distinct faces (derived from the bundled example face:
crops, flips, sizes) with new seeds and alternating ROIs, as users re-editing their photographs do: after the first
request per face and replica, the encode cache serves SMPN, encoder and decoder prefix.

The cores are split between replicas (1 replica: `threads` = all cores; 2 replicas: half each), so the replica
rows compare the same machine used two ways.

    python benchmarks/bench_serve.py [--model M] [--backend onnxruntime] [--requests 160] [--clients 8]
                                     [--time-limit 120] [--json benchmarks/results/serve_cpu.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "ssae" / "assets" / "example_face.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def face_pool(n: int) -> list[bytes]:
    """n distinct JPEG faces: crops, flips and sizes of the bundled example face."""
    base = Image.open(FACE).convert("RGB")
    out = []
    for k in range(n):
        w, h = base.size
        m = 4 * (k % 5)
        im = base.crop((m, m // 2, w - m, h - m // 2))
        if k % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im = im.resize((160 + 24 * (k % 4), 160 + 24 * (k % 4)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def wait_for_replicas(n: int, app: str, timeout: float = 180.0) -> None:
    from ssae.runtime.serve.deployment import replica_actor_names
    t0 = time.time()
    while len(replica_actor_names(app)) != n:
        if time.time() - t0 > timeout:
            raise RuntimeError(f"{n} replicas did not come up in {timeout:.0f} s")
        time.sleep(0.2)


def kill_replica(name: str) -> None:
    """Kill one replica actor (fault injection: Serve's controller notices and starts a replacement)."""
    import ray
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def run_load(url: str, token: str | None, faces: list[bytes], requests: int, clients: int, time_limit: float,
             kill_after: int | None = None, app: str = "ssae") -> dict:
    """Send `requests` edits from `clients` threads (or until `time_limit`); optionally kill a replica once
    `kill_after` requests have completed."""
    from ssae.runtime.serve import Client, ServeError
    from ssae.runtime.serve.deployment import replica_actor_names

    lock = threading.Lock()
    state = {"next": 0, "done": 0, "failed": 0}
    lat: list[float] = []
    batch_sizes: list[int] = []
    errors: list[str] = []
    kill_info: dict = {}
    deadline = time.perf_counter() + time_limit
    killed = threading.Event()

    def worker(cid: int) -> int:
        c = Client(url, token=token, retries=40, backoff=0.1, backoff_max=1.0, timeout=120)
        while True:
            with lock:
                i = state["next"]
                if i >= requests or time.perf_counter() > deadline:
                    return c.retried
                state["next"] += 1
            t = time.perf_counter()
            try:
                c.edit(faces[i % len(faces)], roi=("hair", "lips", "nose", "skin")[i % 4], seed=i)
                ok = True
            except ServeError as e:
                ok = False
                with lock:
                    errors.append(str(e)[:200])
            dt = (time.perf_counter() - t) * 1e3
            with lock:
                if ok:
                    state["done"] += 1
                    lat.append(dt)
                    batch_sizes.append(int(c.last_headers.get("x-ssae-batch-size", "1")))
                else:
                    state["failed"] += 1
                if kill_after is not None and state["done"] >= kill_after and not killed.is_set():
                    killed.set()
                    threading.Thread(target=killer, daemon=True).start()

    def killer() -> None:
        names = replica_actor_names(app)
        victim = names[0]
        t0 = time.perf_counter()
        kill_replica(victim)
        kill_info.update(replica=victim, at_request=state["done"])
        while True:  # Serve notices the dead actor and starts a replacement
            now = replica_actor_names(app)
            if victim not in now and len(now) == len(names):
                kill_info["replaced_after_s"] = round(time.perf_counter() - t0, 2)
                return
            if time.perf_counter() - t0 > 120:
                kill_info["replaced_after_s"] = None
                return
            time.sleep(0.1)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        retried = sum(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    if killed.is_set():
        for _ in range(600):  # let the killer thread record the replacement
            if "replaced_after_s" in kill_info:
                break
            time.sleep(0.2)
    return {"requests": requests, "sent": state["next"], "completed": state["done"], "failed": state["failed"],
            "retried": retried, "seconds": round(wall, 3),
            "throughput_rps": round(state["done"] / wall, 3) if wall else None,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "mean_ms": float(np.mean(lat)) if lat else None,
            "mean_batch": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None,
            "max_batch_seen": max(batch_sizes) if batch_sizes else None,
            "hit_time_limit": state["next"] < requests, "errors": errors[:5], "kill": kill_info or None}


def fmt(v, nd=1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint, export folder or preset (default: bundled)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--requests", type=int, default=160, help="edit requests per configuration")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--faces", type=int, default=8, help="distinct faces in the workload")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per configuration")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray instance")
    ap.add_argument("--no-fault", action="store_true", help="skip the replica-kill run")
    ap.add_argument("--total-limit", type=float, default=None,
                    help="hard limit for the whole script in seconds (default: 5 x (2 x time limit + 240))")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "serve_cpu.json"))
    args = ap.parse_args(argv)

    import ray
    from ray import serve

    from ssae.fileio import atomic_write
    from ssae.runtime.profiling.bench import machine_info
    from ssae.runtime.serve.deployment import ServeConfig, build_app
    from ssae.runtime.serve.engine import prepare_model

    # the whole script stops by itself: a watchdog ends it if something hangs (e.g. replicas never placed)
    total = args.total_limit or 5 * (args.time_limit * 2 + 240)
    def _watchdog() -> None:
        print(f"bench_serve: total time limit of {total:.0f} s reached, stopping", file=sys.stderr, flush=True)
        os._exit(3)
    timer = threading.Timer(total, _watchdog)
    timer.daemon = True
    timer.start()

    model = prepare_model(args.model, args.backend)  # export once here, not once per replica
    faces = face_pool(args.faces)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    configs = [(1, 1), (1, args.max_batch), (2, 1), (2, args.max_batch)]  # (replicas, max_batch)
    runs = []
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        plan = [(r, b, None) for r, b in configs]
        if not args.no_fault:
            plan.append((2, args.max_batch, args.requests // 3))
        for replicas, max_batch, kill_after in plan:
            cfg = ServeConfig(model=model, backend=args.backend, port=port, replicas=replicas, max_batch=max_batch,
                              batch_wait_ms=args.batch_wait_ms, threads=max(1, args.cpus // replicas),
                              cpus_per_replica=max(0.5, args.cpus / replicas - 0.01), cache_mb=256)
            serve.delete("ssae")  # free the previous configuration's CPUs before placing the new replicas
            serve.run(build_app(cfg), name="ssae", route_prefix="/")
            wait_for_replicas(replicas, "ssae")
            label = (f"{replicas} replica{'s' if replicas > 1 else ''}, batching "
                     f"{'on (max ' + str(max_batch) + ')' if max_batch > 1 else 'off'}"
                     + (", replica killed" if kill_after is not None else ""))
            print(f"{label}: warming up ...", file=sys.stderr, flush=True)
            # warm-up: every face once per replica (encode caches filled, graphs compiled), not timed
            run_load(url, None, faces, len(faces) * replicas, min(args.clients, len(faces)), args.time_limit)
            res = run_load(url, None, faces, args.requests, args.clients, args.time_limit, kill_after)
            res.update(label=label, replicas=replicas, max_batch=max_batch, batching=max_batch > 1,
                       threads_per_replica=cfg.threads)
            runs.append(res)
            print(f"{label}: {res['completed']}/{res['requests']} in {res['seconds']:.1f} s, "
                  f"{fmt(res['throughput_rps'], 2)} req/s, p50 {fmt(res['p50_ms'])} ms, p99 {fmt(res['p99_ms'])} ms, "
                  f"failed {res['failed']}, retried {res['retried']}", file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    report = {"machine": machine_info(), "model": args.model or "bundled", "backend": args.backend,
              "settings": {"requests": args.requests, "clients": args.clients, "faces": args.faces,
                           "time_limit_s": args.time_limit, "max_batch": args.max_batch,
                           "batch_wait_ms": args.batch_wait_ms, "ray_cpus": args.cpus,
                           "workload": "re-edits of a pool of distinct faces, new seed per request, ROIs alternate "
                                       "hair/lips/nose/skin; a warm-up pass fills the encode caches"},
              "runs": runs}
    print("| configuration | completed | failed | retried | req/s | p50 ms | p99 ms | mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['label']} | {r['completed']}/{r['requests']} | {r['failed']} | {r['retried']} | "
              f"{fmt(r['throughput_rps'], 2)} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['mean_batch'], 2)} |")
    for r in runs:
        if r["kill"]:
            print(f"killed {r['kill'].get('replica')} after {r['kill'].get('at_request')} requests; replaced after "
                  f"{r['kill'].get('replaced_after_s')} s; {r['failed']} requests lost, {r['retried']} retries")
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
