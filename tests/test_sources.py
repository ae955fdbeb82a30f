import functools
import http.server
import os
import shutil
import threading

import pytest
from conftest import write_dataset

from fmnist_alexnet.data import sources
from fmnist_alexnet.errors import FmnistError


@pytest.fixture
def no_defaults(monkeypatch, tmp_path):
    """Hide the machine's own data so only what a test sets up is found."""
    monkeypatch.setattr(sources, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "TORCHVISION_ROOT", tmp_path / "no-torchvision")
    monkeypatch.delenv(sources.ENV_VAR, raising=False)


def test_search_order(no_defaults, monkeypatch, tmp_path):
    explicit = write_dataset(tmp_path / "explicit")
    env = write_dataset(tmp_path / "env", gz=False)
    debian = write_dataset(tmp_path / "debian")
    torchvision = write_dataset(tmp_path / "tv" / "FashionMNIST" / "raw")
    monkeypatch.setattr(sources, "DEBIAN_DIR", debian)
    monkeypatch.setattr(sources, "TORCHVISION_ROOT", tmp_path / "tv")
    assert sources.find_data().origin.startswith("Debian")
    shutil.rmtree(debian)
    found = sources.find_data()
    assert found.origin == "torchvision root" and found.files["t10k-images-idx3-ubyte"].parent == (
        torchvision
    )
    monkeypatch.setenv(sources.ENV_VAR, str(env))
    found = sources.find_data()
    assert found.origin == "$FMNIST_DATA"
    assert found.files["train-labels-idx1-ubyte"].name == "train-labels-idx1-ubyte"  # raw files
    assert sources.find_data(explicit).origin == "--data-dir"


def test_torchvision_layout_under_data_dir(no_defaults, tmp_path):
    write_dataset(tmp_path / "root" / "FashionMNIST" / "raw")
    assert len(sources.find_data(tmp_path / "root").files) == 4


def test_explicit_dir_without_files_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(FmnistError, match="--data-dir .*no Fashion-MNIST files there"):
        sources.find_data(tmp_path)


def test_nothing_found_says_how_to_fix(no_defaults):
    with pytest.raises(FmnistError, match="apt-get install dataset-fashion-mnist") as info:
        sources.find_data()
    assert "fmnist-alexnet data download --to DIR" in str(info.value)


def test_real_files_match_published_checksums(real_data):
    assert sources.verify(real_data) == dict.fromkeys(sources.FILE_NAMES, True)


def test_synthetic_files_fail_verification(tmp_path):
    found = sources.find_data(write_dataset(tmp_path))
    assert not any(sources.verify(found).values())


_verify = sources.verify  # the real one, before a test wraps it


def test_is_published_hashes_each_file_state_once(real_data, tmp_path, monkeypatch):
    synthetic = sources.find_data(write_dataset(tmp_path / "synthetic"))
    calls = []
    monkeypatch.setattr(sources, "verify", lambda source: calls.append(source) or _verify(source))
    monkeypatch.setattr(sources, "_PUBLISHED", {})
    for _ in range(2):
        assert sources.is_published(real_data) and not sources.is_published(synthetic)
    assert len(calls) == 2  # once per file state
    os.utime(synthetic.files["t10k-labels-idx1-ubyte"], ns=(1, 1))  # touched: hashed again
    assert not sources.is_published(synthetic) and len(calls) == 3


@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server whose folder a test fills; yields (folder, url)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_fetches_and_verifies_real_files(real_data, mirror, tmp_path):
    folder, url = mirror
    for path in real_data.files.values():
        shutil.copy(path, folder / (path.name if path.suffix == ".gz" else path.name + ".gz"))
    target = tmp_path / "got"
    done = sources.download(target, url)
    assert [what for _, what in done] == ["downloaded"] * 4
    assert sources.verify(sources.find_data(target)) == dict.fromkeys(sources.FILE_NAMES, True)
    again = sources.download(target, url)
    assert [what for _, what in again] == ["already present"] * 4


def test_download_rejects_wrong_content_and_leaves_nothing(mirror, tmp_path):
    folder, url = mirror
    write_dataset(folder)  # right names, wrong bytes
    target = tmp_path / "got"
    with pytest.raises(FmnistError, match="SHA-256 .* does not match"):
        sources.download(target, url)
    assert list(target.iterdir()) == []


def test_download_missing_file_is_a_clear_error(mirror, tmp_path):
    _, url = mirror
    with pytest.raises(FmnistError, match="cannot download .*HTTP 404"):
        sources.download(tmp_path / "got", url)


def test_download_unreachable_host(tmp_path):
    with pytest.raises(FmnistError, match="cannot download"):
        sources.download(tmp_path / "got", "http://127.0.0.1:9/", timeout=5)
