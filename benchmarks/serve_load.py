"""Loopback load test of `fmnist-alexnet serve`: micro-batching against --max-batch 1, and
other model files (an int8 export) against the same float32 baseline.

Starts the server on 127.0.0.1 with CHECKPOINT at the default --max-batch 64, then at
--max-batch 1, then once for each ``--also`` model (at --max-batch 64), and for each runs N
concurrent clients (1, 8, 32, 128 by default), each sending one real test image per request
for a fixed time. Reports requests/s, p50/p95/p99 latency, errors and the share of answers
whose label equals offline `predict` with the same model on the same image file, and each
row's requests/s over CHECKPOINT's --max-batch 1 row at the same concurrency; then,
optionally, a soak at one concurrency to see whether the server's memory stays flat.
Bounded: every phase has a fixed duration and the whole run stops by itself. Only 127.0.0.1
is ever contacted.

Usage: python -m benchmarks.serve_load CHECKPOINT [--also MODEL.onnx ...] [--seconds 10]
           [--clients 1 8 32 128] [--threads N] [--soak-seconds 300 --soak-clients 32]
           [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from PIL import Image

from fmnist_alexnet.data.sources import find_data, load_splits
from fmnist_alexnet.infer.engines import load_classifier
from fmnist_alexnet.infer.predict import predict_images
from fmnist_alexnet.runtime import device_name

HOST = "127.0.0.1"
CLI = (sys.executable, "-m", "fmnist_alexnet")
N_IMAGES = 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--also", nargs="+", default=[], help="more models, at max-batch 64")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--threads", type=int, help="serve --threads")
    parser.add_argument("--soak-seconds", type=float, default=0.0)
    parser.add_argument("--soak-clients", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()
    report: dict = {
        "machine": device_name(torch.device("cpu")),
        "checkpoint": args.checkpoint,
        "seconds_per_level": args.seconds,
        "threads": args.threads,
        "runs": {},
    }
    plan = [(args.checkpoint, 64), (args.checkpoint, 1)] + [(m, 64) for m in args.also]
    for model, max_batch in plan:
        name = f"{Path(model).name} max_batch_{max_batch}"
        report["runs"][name] = serve_rows(model, max_batch, args, report, name)
    baseline = report["runs"][f"{Path(args.checkpoint).name} max_batch_1"]
    report["ratio_requests_per_s"] = {
        name: {
            str(row["clients"]): row["requests_per_s"] / base["requests_per_s"]
            for row, base in zip(rows, baseline, strict=True)
        }
        for name, rows in report["runs"].items()
    }
    print("requests/s over the checkpoint's max-batch 1:")
    for name, ratios in report["ratio_requests_per_s"].items():
        print(f"  {name}: " + ", ".join(f"{c} clients {r:.2f}x" for c, r in ratios.items()))
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")


def serve_rows(model: str, max_batch: int, args, report: dict, name: str) -> list[dict]:
    """One server of ``model``: a row per concurrency level (and the soak, once)."""
    images, expected = offline_answers(model)
    threads = ["--threads", str(args.threads)] if args.threads else []
    with running_server(model, "--max-batch", str(max_batch), *threads) as server:
        port, pid = server["port"], server["process"].pid
        rows = []
        for clients in args.clients:
            row = asyncio.run(load(port, images, expected, clients, args.seconds))
            row["rss_mb"] = rss_mb(pid)
            rows.append(row)
            print(f"{name} {format_row(row)}", flush=True)
        if args.soak_seconds and "soak" not in report:
            start = rss_mb(pid)
            row = asyncio.run(load(port, images, expected, args.soak_clients, args.soak_seconds))
            row |= {"rss_mb_start": start, "rss_mb_end": rss_mb(pid)}
            report["soak"] = row
            print(
                f"soak {args.soak_seconds:.0f} s {format_row(row)} "
                f"RSS {start:.0f} -> {row['rss_mb_end']:.0f} MB",
                flush=True,
            )
    return rows


def offline_answers(model) -> tuple[list[bytes], list[int]]:
    """The first N test images as PNG files, and `predict`'s top label for each file with
    ``model`` (a checkpoint or an .onnx, run as `predict` runs it)."""
    test_images = load_splits(find_data())["test"][0][:N_IMAGES]
    payloads = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, image in enumerate(test_images):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            payloads.append(buffer.getvalue())
            paths.append(Path(tmp) / f"{i:04d}.png")
            paths[-1].write_bytes(payloads[-1])
        classifier, _ = load_classifier(model, "auto", "cpu")
        rows = predict_images(classifier, paths, top_k=1)
    return payloads, [row.top[0].label for row in rows]


async def load(port, images, expected, clients, seconds) -> dict:
    """``clients`` keep-alive connections, each sending one image per request until time is up.

    The client is a few lines of asyncio HTTP/1.1 with every request body built beforehand:
    on two cores a full HTTP client library in the same machine costs as much CPU per request
    as the server does, and would measure itself.
    """
    bodies = [multipart(f"{i}.png", data) for i, data in enumerate(images)]
    latencies, errors, right, answered = [], 0, 0, 0
    stop_at = time.perf_counter() + seconds

    async def client(worker: int) -> None:
        nonlocal errors, right, answered
        reader, writer = await asyncio.open_connection(HOST, port)
        i = worker
        try:
            while time.perf_counter() < stop_at:
                index = i % len(images)
                i += clients
                started = time.perf_counter()
                try:
                    writer.write(bodies[index])
                    status, body = await read_response(reader)
                    result = json.loads(body)["results"][0]
                    ok = status == 200 and "top" in result
                except (OSError, ValueError, KeyError, asyncio.IncompleteReadError):
                    ok = False
                latencies.append(time.perf_counter() - started)
                if not ok:
                    errors += 1
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                answered += 1
                right += result["top"][0]["label"] == expected[index]
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(w) for w in range(clients)))
    elapsed = time.perf_counter() - started
    ms = sorted(1000 * x for x in latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "errors": errors,
        "same_label_as_predict": right / answered if answered else 0.0,
    }


def multipart(name: str, data: bytes) -> bytes:
    """One whole HTTP request: POST /v1/predict with ``data`` in the field ``files``."""
    boundary = "fmnistloadtest"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/predict?top_k=1 HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    return status, await reader.readexactly(length)


def percentile(sorted_values, q) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))]


def format_row(row) -> str:
    return (
        f"clients {row['clients']:3d}: {row['requests_per_s']:7.1f} req/s, p50 "
        f"{row['p50_ms']:6.1f} ms, p95 {row['p95_ms']:6.1f}, p99 {row['p99_ms']:6.1f}, "
        f"errors {row['errors']}, same label {100 * row['same_label_as_predict']:.1f} %"
    )


@contextmanager
def running_server(checkpoint, *serve_args: str, timeout: float = 180.0, cli=CLI):
    """`fmnist-alexnet serve CHECKPOINT *serve_args` on a free loopback port, on the CPU (``cli``:
    the command that runs fmnist-alexnet); yields its port, its process and a function that
    returns its stderr so far; SIGTERM on exit."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    argv = [*cli, "serve", str(checkpoint)]
    argv += ["--host", HOST, "--port", str(port), "--device", "cpu", *serve_args]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    captured: list[str] = []
    reader = threading.Thread(target=lambda: captured.extend(process.stderr), daemon=True)
    reader.start()
    try:
        _wait_ready(port, process, timeout)
        yield {"port": port, "process": process, "stderr": lambda: "".join(captured)}
    finally:
        process.terminate()
        process.wait(timeout=60)
        reader.join(timeout=5)


def _wait_ready(port: int, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"http://{HOST}:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
