"""The HTTP service: the same answers as `predict`, every limit, batching, a clean stop."""

import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi")
try:  # the client library starlette's TestClient itself picks, so its errors are the ones caught
    import httpx2 as httpx
except ModuleNotFoundError:
    import httpx
from conftest import TINY_CLI, free_port  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from tinynet import TinyNet  # noqa: E402

from benchmarks import serve_faults  # noqa: E402
from fmnist_alexnet.checkpoint import load_model  # noqa: E402
from fmnist_alexnet.data.sources import load_splits  # noqa: E402
from fmnist_alexnet.infer.predict import predict_images  # noqa: E402
from fmnist_alexnet.model import count_parameters  # noqa: E402
from fmnist_alexnet.serve.app import ServeSettings, create_app  # noqa: E402
from fmnist_alexnet.serve.loading import load_served  # noqa: E402
from fmnist_alexnet.serve.server import build_server  # noqa: E402

SETTINGS = ServeSettings(max_batch=16, max_wait_ms=20, max_upload_mb=1, max_files=8)


@pytest.fixture(scope="module")
def best(tiny_run):
    return tiny_run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def real_split(real_data):
    images, labels = load_splits(real_data)["test"]
    return images[:64], labels[:64]


@pytest.fixture(scope="module")
def client(best, real_split):
    model, info = load_served(best, device="cpu", precision="fp32")
    with TestClient(create_app(model, info, SETTINGS, real_split)) as client:
        yield client


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(*named):
    return [("files", (name, data, "image/png")) for name, data in named]


@pytest.fixture(scope="module")
def offline(best, real_split, tmp_path_factory):
    """`predict` on the same images written as files: what the server must answer."""
    folder = tmp_path_factory.mktemp("pngs")
    for i, image in enumerate(real_split[0]):
        (folder / f"{i:02d}.png").write_bytes(png(image))
    rows = predict_images(load_model(best, "cpu", precision="fp32"), [folder], top_k=3)
    return [[score.to_dict() for score in row.top] for row in rows]


# Server and `predict` both run in fp32 here: with bf16 autocast, batches of other sizes may
# round differently and flip a near-tie of this barely trained model.
def test_answers_in_request_order_as_predict_does_with_errors_in_place(client, real_split, offline):
    files = upload(("a.png", png(real_split[0][0])), ("broken.png", b"not an image"))
    files += upload(("b.png", png(real_split[0][1])))
    response = client.post("/v1/predict?top_k=3", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "broken.png", "b.png"]
    assert "not an image file" in results[1]["error"] and "top" not in results[1]
    for result, expected in zip((results[0], results[2]), (offline[0], offline[1]), strict=True):
        assert [t["label"] for t in result["top"]] == [t["label"] for t in expected]
        assert [t["prob"] for t in result["top"]] == pytest.approx([t["prob"] for t in expected])


def test_preview_is_the_28x28_input(client, real_split):
    files = upload(("a.png", png(real_split[0][5])))
    response = client.post("/v1/predict?preview=true", files=files)
    data_url = response.json()["results"][0]["image"]
    assert data_url.startswith("data:image/png;base64,")
    import base64

    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))
    assert np.array_equal(image, real_split[0][5])


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"json": {"files": []}}, 415, "send multipart/form-data"),
        ({"files": [("other", ("a.png", b"x", "image/png"))]}, 422, "no files in the multipart"),
        (
            {"content": b"--zz\r\nnonsense", "headers": {"content-type": "multipart/form-data"}},
            422,
            "malformed multipart body",
        ),
    ],
)
def test_unsupported_content_is_a_json_error(client, request_kwargs, status, message):
    response = client.post("/v1/predict", **request_kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_limits(client, real_split):
    one = png(real_split[0][0])
    too_many = client.post("/v1/predict", files=upload(*[(f"{i}.png", one) for i in range(9)]))
    assert too_many.status_code == 413 and "more than 8 files" in too_many.json()["error"]
    big = upload(("big.png", os.urandom(2**20 + 10)))
    assert client.post("/v1/predict", files=big).status_code == 413
    # A chunked body with no Content-Length is counted as it arrives.
    chunks = (b"x" * 65536 for _ in range(40))
    streamed = client.post(
        "/v1/predict",
        content=chunks,
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    assert streamed.status_code == 413 and "over the limit of 1 MiB" in streamed.json()["error"]
    bad_k = client.post("/v1/predict?top_k=11", files=upload(("a.png", one)))
    assert bad_k.status_code == 422 and "top_k" in bad_k.json()["error"]


def test_random_bodies_never_get_a_500(client, real_split):
    rng = np.random.default_rng(0)
    real = png(real_split[0][0])
    for trial in range(40):
        noise = rng.bytes(int(rng.integers(0, 5000)))
        if trial % 2:  # a well-formed upload of damaged file contents
            cut = int(rng.integers(0, len(real)))
            body = {"files": upload(("x.png", real[:cut] + noise[:50]))}
        else:  # bytes that only claim to be multipart
            boundary = "b" * int(rng.integers(1, 70))
            header = f"multipart/form-data; boundary={boundary}"
            body = {
                "content": f"--{boundary}\r\n".encode() + noise,
                "headers": {"content-type": header},
            }
        response = client.post("/v1/predict", **body)
        assert response.status_code in (200, 413, 422), (trial, response.status_code)
        assert response.headers["content-type"] == "application/json"
        if response.status_code == 200:
            assert all("top" in r or "error" in r for r in response.json()["results"])


_CONTENT_TYPES = st.sampled_from(
    ["multipart/form-data", "multipart/form-data; boundary=zz", "application/json",
     "text/plain", "image/png", "", "multipart/form-data; boundary=" + "b" * 80]
)  # fmt: skip


@settings(max_examples=60)
@given(
    kind=st.sampled_from(["raw", "files"]),
    content_type=_CONTENT_TYPES | st.text(max_size=40),
    body=st.binary(max_size=3000),
    names=st.lists(st.text(max_size=30), min_size=0, max_size=12),
    top_k=st.none() | st.text(max_size=4),
)
def test_hypothesis_bodies_get_json_answers_never_a_500(client, kind, content_type, body, names,
                                                         top_k):  # fmt: skip
    url, params = "/v1/predict", {} if top_k is None else {"top_k": top_k}
    if kind == "raw":
        try:
            headers = {"content-type": content_type}
            response = client.post(url, content=body, headers=headers, params=params)
        except (UnicodeEncodeError, httpx.LocalProtocolError):
            return  # a header the client library itself will not send
    else:
        files = [
            ("files", (name, body[: 50 * (i + 1)], "image/png")) for i, name in enumerate(names)
        ]
        response = client.post(url, files=files or None, data={"x": "1"}, params=params)
    assert response.status_code in (200, 413, 415, 422), response.text
    assert response.headers["content-type"] == "application/json"
    assert "Traceback" not in response.text
    assert client.get("/ready").status_code == 200


def test_pixel_cap_refuses_an_image_before_decoding(client):
    buffer = io.BytesIO()
    Image.new("L", (9000, 5000)).save(buffer, format="PNG")  # 45 Mpx in a small file
    response = client.post("/v1/predict", files=upload(("huge.png", buffer.getvalue())))
    assert response.status_code == 200
    assert "too large" in response.json()["results"][0]["error"]


def test_model_health_ready_metrics_and_docs(client, best, real_split):
    info = client.get("/v1/model").json()
    assert info["sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert info["arch"] == "tiny" and info["parameters"] == count_parameters(TinyNet())
    assert info["contract"]["image_size"] == 63 and len(info["classes"]) == 10
    measured = json.loads((best.parent.parent / "test_metrics.json").read_text())
    assert info["test_accuracy"] == measured["accuracy"]
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True}
    client.post("/v1/predict", files=upload(("a.png", png(real_split[0][0]))))  # alone, too
    text = client.get("/metrics").text
    assert "fmnist_batch_images_bucket" in text and 'path="/v1/predict"' in text
    schema = client.get("/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    samples = client.get("/v1/samples?count=3").json()["samples"]
    assert len(samples) == 3 and all(s["image"].startswith("data:image/png") for s in samples)
    for page in ("/", "/docs"):
        html = client.get(page).text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), page  # nothing fetched


def test_an_onnx_export_serves_the_same_answers(best, real_split, offline, tmp_path):
    from fmnist_alexnet.infer.export import export

    path = tmp_path / "model.onnx"
    export(best, "onnx", path, check_images=8)
    model, info = load_served(path)
    assert info["engine"] == "onnx" and info["parameters"] == count_parameters(TinyNet())
    with TestClient(create_app(model, info, SETTINGS)) as onnx_client:
        files = upload(*[(f"{i}.png", png(real_split[0][i])) for i in range(8)])
        results = onnx_client.post("/v1/predict", files=files).json()["results"]
        assert onnx_client.get("/v1/samples").status_code == 404  # no dataset given
    assert [r["top"][0]["label"] for r in results] == [offline[i][0]["label"] for i in range(8)]


@pytest.fixture(scope="module")
def live_server(best, real_split):
    """A real uvicorn server on a free loopback port, in a thread."""
    model, info = load_served(best, device="cpu", precision="fp32")
    app = create_app(model, info, SETTINGS, real_split)
    server = build_server(app, "127.0.0.1", free_port())
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.config.port}"
    wait_ready(base)
    yield base
    server.should_exit = True
    thread.join(timeout=30)


def wait_ready(base, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} never became ready")


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    live_server, real_split, offline
):
    def one(i):
        files = upload((f"{i}.png", png(real_split[0][i])))
        return httpx.post(live_server + "/v1/predict", files=files, timeout=60).json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(64)))
    for i, answer in enumerate(answers):
        (result,) = answer["results"]
        assert result["filename"] == f"{i}.png"
        assert result["top"][0]["label"] == offline[i][0]["label"], i
    metrics = httpx.get(live_server + "/metrics").text
    passes = float(re.search(r"^fmnist_batch_images_count (\S+)", metrics, re.M).group(1))
    images = float(re.search(r"^fmnist_batch_images_sum (\S+)", metrics, re.M).group(1))
    assert passes < images  # several requests shared forward passes


def test_sigterm_answers_the_request_in_flight_then_exits_0(best):
    port = free_port()
    command = [*TINY_CLI, "serve", str(best), "--port", str(port)]
    command += ["--device", "cpu", "--max-wait-ms", "1500"]  # the request waits in the batcher
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        image = png(np.zeros((28, 28), np.uint8))
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                f"http://127.0.0.1:{port}/v1/predict",
                files=upload(("z.png", image)),
                timeout=60,
            )
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            response = pending.result()
        assert response.status_code == 200 and "top" in response.json()["results"][0]
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "every accepted request was answered" in stdout


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="no Debian chromium (make setup installs it as root)"
)
def test_the_page_in_a_real_browser_shows_what_predict_says(
    live_server, real_split, offline, tmp_path
):
    sync_api = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "test-image-7.png"
    image.write_bytes(png(real_split[0][7]))
    broken = tmp_path / "notes.png"
    broken.write_text("not an image")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's width
            page.goto(live_server + "/")
            page.set_input_files("#picker", [str(image), str(broken)])
            page.wait_for_selector(".card .error")
            cards = page.locator(".card")
            assert cards.count() == 2
            assert cards.nth(0).locator(".bar .label").first.inner_text() == offline[7][0]["class"]
            assert "not an image file" in cards.nth(1).locator(".error").inner_text()
            assert page.locator("#status").inner_text() == "1 classified, 1 could not be read"
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()


def test_a_port_in_use_is_one_line_and_exit_2(best, capsys):
    from fmnist_alexnet.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(best), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err


def test_garbage_hostile_uploads_and_slow_clients_on_loopback(best):
    """A bounded run of benchmarks/serve_faults.py against a real server process: no 500,
    no traceback in an answer or in the server's log, /ready answers during and after."""
    report = serve_faults.run_trial(
        best, garbage=150, hostile=12, slow=2, slow_seconds=1, cli=TINY_CLI
    )
    assert report["held"], report
    assert report["ready_after"] == 200 and report["server_stderr_tracebacks"] == 0
    assert sum(report["garbage_answers"].values()) == 150
