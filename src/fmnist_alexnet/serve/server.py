"""Run the app under uvicorn until Ctrl-C or SIGTERM; in-flight requests finish first."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import uvicorn
from starlette.types import ASGIApp

from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.serve.app import ServeSettings, create_app
from fmnist_alexnet.serve.loading import load_served


class _Server(uvicorn.Server):
    """A signal stops it gracefully and the process exits 0 (uvicorn itself would raise the
    signal again once it has shut down)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals can only be handled in the main thread
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def build_server(app: ASGIApp, host: str, port: int) -> uvicorn.Server:
    return _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))


def serve(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    settings: ServeSettings | None = None,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    threads: int | None = None,
) -> None:
    """``threads``: intra-op threads of the forward pass (PyTorch's or ONNX Runtime's); None
    leaves each engine's default (every core)."""
    settings = settings or ServeSettings()
    check_settings(settings, port)
    check_address(host, port)
    if threads is not None:
        torch.set_num_threads(threads)
    model, info = load_served(model_path, engine, device, precision, threads)
    app = create_app(model, info, settings, _test_samples(data_dir))
    server = build_server(app, host, port)
    what = f"{info['arch']}, {info['engine']}, {info['precision']}"
    log(f"serving {info['file']} ({what}) on http://{host}:{port}/")
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        raise FmnistError(
            f"cannot listen on {host}:{port} (in use or not an address here)"
        ) from None
    log("stopped; every accepted request was answered")


def check_settings(settings: ServeSettings, port: int) -> None:
    for name, value in (
        ("--max-batch", settings.max_batch),
        ("--max-files", settings.max_files),
        ("--max-upload-mb", settings.max_upload_mb),
    ):
        if value <= 0:
            raise FmnistError(f"{name} must be > 0, got {value}")
    if settings.max_wait_ms < 0:
        raise FmnistError(f"--max-wait-ms must be >= 0, got {settings.max_wait_ms}")
    if not 0 <= port <= 65535:
        raise FmnistError(f"--port must be in 0..65535, got {port}")


def check_address(host: str, port: int) -> None:
    """Fail with one line before loading anything when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise FmnistError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _test_samples(data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The real test set for the page's "try test images", or None when it is not found."""
    from fmnist_alexnet.data.sources import find_data, load_split

    try:
        return load_split(find_data(data_dir), "test")
    except FmnistError:
        return None
