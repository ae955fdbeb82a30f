"""Fault trial of `fmnist-alexnet serve` on 127.0.0.1: garbage, hostile uploads, slow clients.

Starts the server on a free loopback port (1 MiB uploads, 8 files per request), then:

1. ``--garbage`` raw-socket requests: random bytes, broken request lines, bad methods and
   paths, oversized and malformed headers, lying Content-Lengths, truncated bodies;
2. ``--hostile`` well-formed HTTP requests with bad content: malformed multipart, wrong
   content types, bodies over the limit, too many files, odd file names, damaged images;
3. ``--slow`` clients that dribble a request one byte at a time for ``--slow-seconds``,
   while /ready is timed from another connection.

Then /ready must answer 200, no answer may be a 500 or hold a traceback, the server's
stderr must hold no traceback, and its memory is reported before and after. Bounded: fixed
counts, a timeout on every socket, and the slow phase ends at its deadline. Only 127.0.0.1
is contacted.

Usage: python -m benchmarks.serve_faults CHECKPOINT [--garbage 2000] [--hostile 500]
           [--slow 20 --slow-seconds 10] [--seed 0] [--out results.json]
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import random
import socket
import sys
import threading
import time

import httpx
from PIL import Image

from benchmarks.serve_load import CLI, HOST, rss_mb, running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--garbage", type=int, default=2000)
    parser.add_argument("--hostile", type=int, default=500)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--slow-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args()
    report = run_trial(args.checkpoint, args.garbage, args.hostile, args.slow, args.slow_seconds,
                       args.seed)  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(report, out, indent=2)
    sys.exit(0 if report["held"] else 1)


def run_trial(
    checkpoint, garbage=2000, hostile=500, slow=20, slow_seconds=10.0, seed=0, cli=CLI
) -> dict:
    rng = random.Random(seed)
    limits = ("--max-upload-mb", "1", "--max-files", "8")
    with running_server(checkpoint, *limits, cli=cli) as server:
        port, pid = server["port"], server["process"].pid
        rss_before = round(rss_mb(pid), 1)
        t0 = time.perf_counter()
        raw = collections.Counter(send_garbage(port, rng) for _ in range(garbage))
        garbage_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bad_answers: list[str] = []
        statuses = collections.Counter(send_hostile(port, rng, bad_answers) for _ in range(hostile))
        hostile_s = time.perf_counter() - t0
        ready_ms = slow_clients(port, slow, slow_seconds, rng) if slow else []
        ready = httpx.get(f"http://{HOST}:{port}/ready", timeout=10).status_code
        rss_after = round(rss_mb(pid), 1)
    stderr = server["stderr"]()
    raw_500 = sum(n for status, n in raw.items() if status.startswith("5"))
    hostile_500 = sum(n for status, n in statuses.items() if status.startswith("5"))
    report = {
        "garbage_requests": garbage,
        "garbage_answers": dict(raw.most_common()),
        "garbage_s": round(garbage_s, 1),
        "hostile_requests": hostile,
        "hostile_answers": dict(statuses.most_common()),
        "hostile_s": round(hostile_s, 1),
        "answers_with_a_traceback": len(bad_answers),
        "slow_clients": slow,
        "slow_seconds": slow_seconds,
        "ready_ms_during_slow_clients": _spread(ready_ms),
        "ready_after": ready,
        "rss_mb_before": rss_before,
        "rss_mb_after": rss_after,
        "server_stderr_tracebacks": stderr.count("Traceback"),
        "server_stderr_first_traceback": _first_traceback(stderr),
    }
    report["held"] = (
        raw_500 == 0
        and hostile_500 == 0
        and not bad_answers
        and ready == 200
        and report["server_stderr_tracebacks"] == 0
        and (not ready_ms or max(ready_ms) < 2000)
    )
    return report


# ------------------------------------------------------------------ raw garbage


def send_garbage(port: int, rng: random.Random) -> str:
    """One raw request of a random broken kind; the status line's code, or what happened."""
    payload = _garbage(rng)
    try:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = _read_all(sock)
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return "timeout"
    if not answer:
        return "closed"
    first = answer.split(b"\r\n", 1)[0].split()
    code = first[1].decode(errors="replace") if len(first) > 1 else "unparsable"
    if b"Traceback" in answer:
        return f"{code}-with-traceback"
    return code


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 4096))
    if kind == 1:  # a bad request line
        method = rng.choice([b"GET", b"POST", b"BREW", b"", b"G\x00T", b"POST" * 50])
        path = rng.choice([b"/", b"/v1/predict", b"//..//..", b"/%00", b"*", b"/" + b"a" * 9000])
        return method + b" " + path + b" HTTP/" + rng.choice([b"1.1", b"9.9", b"x"]) + b"\r\n\r\n"
    if kind == 2:  # a huge header (bounded)
        return b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
    if kind == 3:  # a Content-Length that lies (longer than what follows)
        return (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                b"boundary=zz\r\nContent-Length: 100000\r\n\r\n--zz\r\n")  # fmt: skip
    if kind == 4:  # a bad Content-Length
        value = rng.choice([b"-1", b"abc", b"99999999999999999999", b"1, 2", b""])
        return b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\nx"
    if kind == 5:  # a broken chunked body
        head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=zz\r\n\r\nzz\r\n")  # fmt: skip
        return head + rng.randbytes(50)
    if kind == 6:  # headers of random bytes
        return b"GET / HTTP/1.1\r\n" + rng.randbytes(200).replace(b"\r\n\r\n", b"") + b"\r\n\r\n"
    return (
        b"GET /"
        + rng.choice([b"ready", b"health", b"metrics", b"nope", b"v1/model"])
        + (b" HTTP/1.0\r\n\r\n")
    )


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if sum(map(len, chunks)) > 1 << 20:
            return b"".join(chunks)


# ------------------------------------------------------------------ hostile HTTP


CONTENT_TYPES = ["application/json", "text/plain", "image/png", "", "multipart/mixed",
                 "application/x-www-form-urlencoded", "multipart/form-data"]  # fmt: skip


def send_hostile(port: int, rng: random.Random, bad_answers: list) -> str:
    url = f"http://{HOST}:{port}/v1/predict"
    kind = rng.randrange(7)
    png = _png(rng)
    if kind == 0:  # malformed multipart
        boundary = "".join(rng.choice("ab-_'\" ") for _ in range(rng.randrange(1, 80)))
        body = f"--{boundary}\r\n".encode() + rng.randbytes(rng.randrange(0, 3000))
        ctype = f"multipart/form-data; boundary={boundary}"
        request = {"content": body, "headers": {"content-type": ctype}}
    elif kind == 1:  # wrong content types
        ctype = rng.choice(CONTENT_TYPES)
        request = {"content": rng.randbytes(200), "headers": {"content-type": ctype}}
    elif kind == 2:  # over the upload limit
        request = {"files": [("files", ("big.png", rng.randbytes(2**20 + 100), "image/png"))]}
    elif kind == 3:  # too many files
        request = {"files": [("files", (f"{i}.png", png, "image/png")) for i in range(40)]}
    elif kind == 4:  # odd names and types
        name = rng.choice(["../../etc/passwd", "ä\u202e.png", "", "a" * 5000, "x\x00.png", "%s%n"])
        request = {"files": [("files", (name, png, rng.choice(["image/png", "text/html", "x"])))]}
    elif kind == 5:  # damaged images
        damaged = bytearray(png)
        for _ in range(rng.randrange(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cut = bytes(damaged[: rng.randrange(len(damaged))])
        request = {"files": [("files", ("d.png", cut, "image/png"))]}
    else:  # query strings
        request = {"files": [("files", ("a.png", png, "image/png"))]}
        url += rng.choice(["?top_k=0", "?top_k=-1", "?top_k=abc", "?top_k=1e9", "?top_k=3&x=%ff"])
    try:
        response = httpx.post(url, timeout=30, **request)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if "Traceback" in response.text or 'File "' in response.text:
        bad_answers.append(response.text[:300])
    return str(response.status_code)


def _png(rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("L", (28, 28), rng.randbytes(784)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------ slow clients


def slow_clients(port: int, count: int, seconds: float, rng: random.Random) -> list[float]:
    """``count`` connections dribbling a request; /ready timed meanwhile (ms)."""
    request = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
               b"boundary=zz\r\nContent-Length: 5000\r\n\r\n--zz\r\n")  # fmt: skip
    deadline = time.perf_counter() + seconds
    stop = threading.Event()

    def dribble(offset: float) -> None:
        try:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                time.sleep(offset)
                for byte in request:
                    if stop.is_set() or time.perf_counter() > deadline:
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(0.05)
                while not stop.is_set() and time.perf_counter() < deadline:
                    sock.sendall(b"x")
                    time.sleep(0.2)
        except OSError:
            return

    threads = [threading.Thread(target=dribble, args=(rng.random(),)) for _ in range(count)]
    for thread in threads:
        thread.start()
    timings = []
    with httpx.Client(timeout=10) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            client.get(f"http://{HOST}:{port}/ready")
            timings.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    return timings


# ------------------------------------------------------------------ the server's log


def _first_traceback(stderr: str) -> str | None:
    at = stderr.find("Traceback")
    return None if at < 0 else stderr[at:].split("\n\n")[0][-1500:]


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(ordered[len(ordered) // 2], 1),
        "max": round(ordered[-1], 1),
    }


if __name__ == "__main__":
    main()
