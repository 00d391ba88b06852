"""Load test of `normalcy serve` on loopback: N requests from C concurrent clients against a server it starts itself.

Without a model argument it writes a small synthetic inspection set (`make_demo_dataset`, "tiles"), fits PatchCore
at its default settings on the normal images and serves that. Every request uploads one test image (normal or
defective, 224 px PNG) and asks for the full answer the review page uses (overlay, heat map and mask PNGs).
Prints throughput, p50/p90/p99 latency, errors by status, and the server's resident memory before and after.
Traffic goes to 127.0.0.1 only; request count and run time are both bounded.

    python benchmarks/load_serve.py [model.normalcy] [--requests 200] [--concurrency 16] [--max-seconds 600]
        [--images IMG ...]   # upload these instead of synthetic tiles
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

HOST = "127.0.0.1"  # loopback only, never configurable


def fit_default_model(workdir: Path, n_train: int) -> tuple[Path, list[Path]]:
    """Fit PatchCore (default parameters) on synthetic normal tiles; return the model and test image paths."""
    import normalcy
    from normalcy.data import make_demo_dataset

    root = make_demo_dataset(workdir / "data", categories=("tiles",), n_train=n_train, n_test_good=8,
                             n_test_defect_per_type=3, seed=0)
    train = sorted((root / "tiles" / "train" / "good").glob("*.png"))
    test = sorted(p for p in (root / "tiles" / "test").rglob("*.png"))
    t0 = time.perf_counter()
    det = normalcy.PatchCore(progress=False).fit(train)
    print(f"fitted PatchCore (image_size {det.image_size}) on {len(train)} synthetic normal images in "
          f"{time.perf_counter() - t0:.1f} s; calibration {det.calibration_.method}, n={det.calibration_.n}")
    return det.save(workdir / "load.normalcy"), test


def synthetic_test_images(workdir: Path) -> list[Path]:
    """Test images for a user-given model: the synthetic tiles test split."""
    from normalcy.data import make_demo_dataset

    root = make_demo_dataset(workdir / "data", categories=("tiles",), n_train=1, n_test_good=8,
                             n_test_defect_per_type=3, seed=0)
    return sorted((root / "tiles" / "test").rglob("*.png"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one `files` part."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/{'jpeg' if name.lower().endswith(('.jpg', '.jpeg')) else 'png'}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    """`normalcy serve` in a child process; returns once /health answers."""
    cmd = [sys.executable, "-m", "normalcy.apps.cli", "serve", str(model), "--host", HOST, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("server did not start within 180 s")


def run_load(port: int, bodies: list[tuple[bytes, str]], n_requests: int, concurrency: int,
             max_seconds: float) -> tuple[list[float], Counter, float, int]:
    """Send `n_requests` POST /predict from `concurrency` threads (keep-alive); latencies, statuses, wall, bytes."""
    lock = threading.Lock()
    next_i = [0]
    latencies: list[float] = []
    statuses: Counter = Counter()
    received = [0]
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        while True:
            with lock:
                i = next_i[0]
                if i >= n_requests or time.monotonic() > deadline:
                    return
                next_i[0] += 1
            body, ctype = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                payload = resp.read()
                status = resp.status
                if status == 200 and json.loads(payload)["n_ok"] != 1:
                    status = "bad-body"
            except (OSError, http.client.HTTPException) as exc:
                status, payload = type(exc).__name__, b""
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=120)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                statuses[status] += 1
                received[0] += len(payload)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses, time.perf_counter() - t0, received[0]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="a .normalcy model file (default: fit one on synthetic tiles)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long (default 600)")
    ap.add_argument("--n-train", type=int, default=20, help="synthetic normal images to fit on (default 20)")
    ap.add_argument("--images", nargs="+", type=Path, help="test images to upload (default: synthetic tiles)")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 64:
        raise SystemExit("--requests must be 1..10000 and --concurrency 1..64")

    with tempfile.TemporaryDirectory(prefix="normalcy-load-") as tmp:
        work = Path(tmp)
        if args.model:
            model, images = Path(args.model), args.images or synthetic_test_images(work)
        else:
            model, images = fit_default_model(work, args.n_train)
        bodies = [multipart(p.name, p.read_bytes()) for p in images]
        port = free_port()
        proc = start_server(model, port, work / "server.log")
        try:
            rss_start = rss_mib(proc.pid)
            _, warm, _, _ = run_load(port, bodies, 16, min(16, args.concurrency), 120)  # allocator and caches settle
            rss_before = rss_mib(proc.pid)
            lat, statuses, wall, nbytes = run_load(port, bodies, args.requests, args.concurrency, args.max_seconds)
            rss_after = rss_mib(proc.pid)
            health = json.loads(_get(port, "/health"))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    ok = statuses.get(200, 0)
    errors = {str(k): v for k, v in statuses.items() if k != 200}
    print(f"server: {model.name if args.model else 'synthetic PatchCore (default parameters)'}, "
          f"{len(images)} distinct test images, 1 image per request, pictures included; "
          f"torch threads in server: default; machine: {os.cpu_count()} cores")
    print(f"requests: {len(lat)} sent ({args.requests} planned) at concurrency {args.concurrency}; "
          f"warm-up {sum(warm.values())} requests not counted")
    print(f"ok: {ok}   errors: {sum(errors.values())} {errors if errors else ''}")
    print(f"wall: {wall:.1f} s   throughput: {len(lat) / wall:.2f} req/s   "
          f"mean response: {nbytes / max(1, len(lat)) / 1024:.0f} KiB")
    print(f"latency: p50 {pct(lat, 50) * 1e3:.0f} ms   p90 {pct(lat, 90) * 1e3:.0f} ms   "
          f"p99 {pct(lat, 99) * 1e3:.0f} ms   max {max(lat) * 1e3:.0f} ms   "
          f"mean {statistics.fmean(lat) * 1e3:.0f} ms")
    print(f"server RSS: {rss_start:.0f} MiB after start-up, {rss_before:.0f} MiB after warm-up, "
          f"{rss_after:.0f} MiB after the run ({rss_after - rss_before:+.0f} MiB)")
    print(f"server queue at the end: {health['queue']}")
    return 0 if not errors else 1


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read()


if __name__ == "__main__":
    raise SystemExit(main())
