"""How long does `vaelab serve` take to answer "decode this code"? (target: under 50 ms on the 2-core CPU)

Serves the reference conv model (Fashion-MNIST's shape, latent 16, discretized logistic; the weights do not change
the time) on a real uvicorn server on 127.0.0.1, and times 1,000 POST /api/decode requests of one random code each
from one client on a kept-alive connection: the whole round trip (JSON parsing and validation, the decoder, PNG
encoding, HTTP). Prints one JSON object: p50, p90, p99 and max in milliseconds.

Usage: python bench/serve_latency.py [--requests 1000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import threading
import time

import numpy as np
import torch

from vaelab.app import serve
from vaelab.data import spec
from vaelab.exploration.explorer import Explorer
from vaelab.models import build
from vaelab.runs.config import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    facts = spec("fashion-mnist")
    model = build(TrainConfig(dataset="fashion-mnist", latent_dim=16), facts.shape, len(facts.classes)).eval()
    explorer = Explorer(model, facts.classes)
    sock = serve.bind("127.0.0.1", 0)
    server = serve.server(explorer, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    conn = http.client.HTTPConnection(*sock.getsockname()[:2])
    rng = np.random.default_rng(0)
    times = []
    for i in range(args.requests + 20):  # the first 20 warm the server and the model
        # bytes, so that http.client sends the body in one packet with the headers
        body = json.dumps({"z": rng.standard_normal(16).round(4).tolist()}).encode()
        t0 = time.perf_counter()
        conn.request("POST", "/api/decode", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        png = r.read()
        dt = time.perf_counter() - t0
        if r.status != 200 or not png.startswith(b"\x89PNG"):
            raise SystemExit(f"request {i}: status {r.status}")
        if i >= 20:
            times.append(dt * 1000)
    server.should_exit = True
    thread.join(10)
    ms = np.array(times)
    out = {
        "bench": "serve_latency",
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "target_ms": 50,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
