"""Screenshot TensorBoard's scalars page for a run folder, in headless Chromium, on loopback.

    .venv/bin/python benchmarks/tensorboard_shot.py runs/X [--out tensorboard.png]

Starts ``tensorboard --logdir RUN/tensorboard`` on 127.0.0.1, waits until it answers, opens
its scalars dashboard in Debian's Chromium (``apt-get install chromium``; Playwright cannot
download its own browser here), waits for the charts, saves a full-page PNG, stops the
server. Nothing is fetched from the internet: TensorBoard serves its own assets.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"tensorboard did not answer at {url} within {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="a run folder, its tensorboard/ folder, or a parent")
    parser.add_argument("--out", default="tensorboard.png")
    parser.add_argument("--page", default="scalars", help="dashboard (scalars, timeseries...)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--settle", type=float, default=8, help="seconds to let charts draw")
    args = parser.parse_args()

    port = free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(tensorboard), "--logdir", args.logdir, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page(viewport={"width": args.width, "height": 1000})
            outside = []
            page.on(
                "request",
                lambda r: outside.append(r.url) if not r.url.startswith(url) else None,
            )
            page.goto(f"{url}#{args.page}", wait_until="networkidle")
            page.wait_for_timeout(args.settle * 1000)  # charts draw after their data arrives
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"wrote {args.out}; requests outside the server: {len(outside)} {outside[:3]}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
