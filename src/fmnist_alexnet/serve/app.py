"""The HTTP service: ``create_app`` builds a FastAPI app around a loaded classifier.

Endpoints: ``POST /v1/predict`` (multipart, repeatable field ``files``), ``GET /v1/model``,
``GET /v1/samples`` (real test images for the page), ``GET /health``, ``GET /ready``,
``GET /metrics`` (Prometheus), ``GET /`` (the page), ``GET /docs`` (an offline API page).
Uploads get the same preparation as ``predict``; the model runs in micro-batches.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from fmnist_alexnet.infer.explain import heatmap_pngs, png_data_url
from fmnist_alexnet.infer.predict import Classifier, ImageError, answers, prepare_image
from fmnist_alexnet.serve.batcher import MicroBatcher
from fmnist_alexnet.serve.limits import BodyLimit
from fmnist_alexnet.serve.metrics import ServeMetrics

FILES_FIELD = "files"


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_upload_mb: float = 10.0
    max_files: int = 64
    invert: str = "auto"
    calibrated: bool = True  # softmax(logits / the model's temperature); False: the raw one


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Service:
    """What the routes share: the model, its batcher and metrics, and two counters."""

    model: Classifier
    info: dict[str, Any]
    settings: ServeSettings
    samples: tuple[np.ndarray, np.ndarray] | None
    metrics: ServeMetrics = field(init=False)
    batcher: MicroBatcher = field(init=False)
    ready: bool = False
    arriving: int = 0  # requests received whose images are not queued yet

    def __post_init__(self) -> None:
        self.metrics = ServeMetrics(self.settings.max_batch)
        self.batcher = MicroBatcher(
            self.model.logits,
            self.settings.max_batch,
            self.settings.max_wait_ms,
            on_batch=self.metrics.batch_size.observe,
            expecting=lambda: self.arriving,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return self.model.spec.class_names

    def explain(self, images: list[np.ndarray], targets: list[int]) -> list[str]:
        """Each image's heatmap of its top class, as a PNG data URL. Its forward passes run
        in this thread, beside the batcher's (one explanation is 169 passes)."""
        batch = torch.from_numpy(np.stack(images))[:, None]
        return [png_data_url(png) for png in heatmap_pngs(self.model, batch, targets)]

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await self.batcher.start()
        warm = np.zeros((min(2, self.settings.max_batch), 28, 28), np.uint8)
        await asyncio.get_running_loop().run_in_executor(None, self.batcher.forward, warm)
        self.ready = True
        yield
        self.ready = False
        await self.batcher.stop()  # every request already accepted gets its answer


def create_app(
    model: Classifier,
    info: dict[str, Any],
    settings: ServeSettings | None = None,
    samples: tuple[np.ndarray, np.ndarray] | None = None,
) -> FastAPI:
    """``info`` is what ``GET /v1/model`` answers; ``samples`` (images, labels) feed the
    page's "try test images" button when the dataset was found."""
    settings = settings or ServeSettings()
    # whether the answers' probabilities are the fitted temperature's (the page says so)
    calibrated = settings.calibrated and model.spec.temperature != 1.0
    service = _Service(model, {**info, "calibrated": calibrated}, settings, samples)
    app = FastAPI(
        title="fmnist-alexnet",
        summary="AlexNet on Fashion-MNIST: classify clothing images",
        version=info.get("version", "0"),
        lifespan=service.lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=int(service.settings.max_upload_mb * 2**20))
    _add_request_metrics(app, service.metrics)
    _add_error_handlers(app)
    _add_predict(app, service)
    _add_facts(app, service)
    _add_pages(app)
    return app


def _add_request_metrics(app: FastAPI, metrics: ServeMetrics) -> None:
    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        metrics.observe_request(request.url.path, response.status_code, started)
        return response


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": "..."}``."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


def _add_predict(app: FastAPI, service: _Service) -> None:
    settings = service.settings

    @app.post("/v1/predict", summary="Classify uploaded images", openapi_extra=_PREDICT_DOC)
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=len(service.names), description="classes per image"),
        preview: bool = Query(False, description="also return each 28x28 input as a PNG"),
        explain: bool = Query(
            False, description="also return a PNG of what drove each image's top class"
        ),
    ) -> dict[str, Any]:
        """Upload one or more image files in the repeatable multipart field 'files'.
        Results come back in request order: {"filename", "top": [{"label", "class", "prob"}],
        "ood", "ood_score"} per file ("ood": true when the picture does not look like a
        clothing item; null when the model has no fitted threshold), or {"filename", "error"}
        for a file that could not be read.
        """
        service.arriving += 1
        try:
            uploads = await _read_uploads(request, settings.max_files)
            loop = asyncio.get_running_loop()
            prepared = await asyncio.gather(
                *(
                    loop.run_in_executor(None, _prepare, data, name, settings.invert)
                    for name, data in uploads
                )
            )
        finally:
            service.arriving -= 1
        results: list[dict[str, Any]] = [{"filename": name} for name, _ in uploads]
        arrays = {i: item for i, item in enumerate(prepared) if isinstance(item, np.ndarray)}
        good = list(arrays)
        for i, item in enumerate(prepared):
            if not isinstance(item, np.ndarray):
                results[i]["error"] = item
        service.metrics.images.inc(len(good))
        service.metrics.file_errors.inc(len(uploads) - len(good))
        if good:
            logits = await service.batcher.logits(np.stack([arrays[i] for i in good]))
            said = answers(logits, service.model.spec, top_k, settings.calibrated)
            for i, answer in zip(good, said, strict=True):
                results[i].update(answer.to_dict())
                if preview:
                    results[i]["image"] = _png_data_url(arrays[i])
            if explain:
                images = [arrays[i] for i in good]
                targets = [answer.top[0].label for answer in said]
                pngs = await loop.run_in_executor(None, service.explain, images, targets)
                for i, png in zip(good, pngs, strict=True):
                    results[i]["explanation"] = png
        return {"results": results}


def _add_facts(app: FastAPI, service: _Service) -> None:
    @app.get("/v1/model", summary="The served model and its input contract")
    async def model_info() -> dict[str, Any]:
        return service.info

    @app.get("/v1/samples", summary="Real test images with their true labels")
    async def sample_images(count: int = Query(8, ge=1, le=32)) -> dict[str, Any]:
        if service.samples is None:
            raise ApiError(404, "the Fashion-MNIST test set was not found on the server")
        images, labels = service.samples
        names = service.names
        picks = np.random.default_rng().choice(len(images), count, replace=False)
        return {
            "samples": [
                {
                    "index": int(i),
                    "label": int(labels[i]),
                    "class": names[int(labels[i])],
                    "image": _png_data_url(images[i]),
                }
                for i in picks
            ]
        }

    @app.get("/health", summary="The process is up")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/ready", summary="The model is loaded and warmed up")
    async def ready() -> Response:
        if not service.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)


def _add_pages(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_static("docs.html"))


async def _read_uploads(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, f"send multipart/form-data with files in the field '{FILES_FIELD}'")
    parser = MultiPartParser(request.headers, request.stream(), max_files=max_files, max_fields=16)
    try:
        form = await parser.parse()
    except ClientDisconnect:  # nobody to answer; without this, a traceback in the log
        raise ApiError(400, "the client disconnected before its upload was complete") from None
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise ApiError(413, f"more than {max_files} files in one request") from None
        raise ApiError(422, f"malformed multipart body: {exc.message}") from None
    try:
        files = [item for item in form.getlist(FILES_FIELD) if not isinstance(item, str)]
        if not files:
            raise ApiError(422, f"no files in the multipart field '{FILES_FIELD}'")
        return [(f.filename or f"file {i + 1}", await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


_BINARY = {"type": "string", "format": "binary"}
_PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILES_FIELD],
                    "properties": {FILES_FIELD: {"type": "array", "items": _BINARY}},
                }
            }
        },
    },
    "responses": {
        "413": {"description": "body over --max-upload-mb, or more files than --max-files"},
        "415": {"description": "not multipart/form-data"},
    },
}


def _prepare(data: bytes, name: str, invert: str) -> np.ndarray | str:
    """The 28x28 input, or the error message of a file that could not be read."""
    try:
        return prepare_image(data, invert, name=name)
    except ImageError as exc:
        return str(exc)


def _png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return png_data_url(buffer.getvalue())


def _static(name: str) -> str:
    static = resources.files("fmnist_alexnet.serve") / "static"
    return (static / name).read_text("utf-8")
