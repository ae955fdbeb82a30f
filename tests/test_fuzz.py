"""Fuzzing with Hypothesis: whatever the input (IDX files, images, checkpoints, numeric
flags), the answer is a result or one clear error of the package's own type; never a crash,
a hang, code run from a file or an allocation the input asks for.

Examples per test are bounded so `make test` stays fast; the profile in conftest.py makes
them the same on every run. `FUZZ_SCALE=50 pytest tests/test_fuzz.py` explores further.
"""

import argparse
import contextlib
import gzip
import io
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fmnist_alexnet.checkpoint import Checkpoint, load_checkpoint, load_weights, save_checkpoint
from fmnist_alexnet.cli import build_parser
from fmnist_alexnet.config import resolve
from fmnist_alexnet.data.idx import read_images, read_labels, sha256
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.predict import ImageError, prepare_image
from fmnist_alexnet.spec import ModelSpec

SCALE = int(os.environ.get("FUZZ_SCALE", "1"))


def examples(n: int):
    return settings(max_examples=n * SCALE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------- IDX files

IMAGES = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
LABELS = np.array([0, 9, 4], dtype=np.uint8)


def idx(array, magic, dims=None) -> bytes:
    dims = array.shape if dims is None else dims
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + array.tobytes()


def read_either(path, labels: bool):
    """The reader's answer: an array, or its one error (which must name the file)."""
    try:
        return (read_labels if labels else read_images)(path)
    except FmnistError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return None


@examples(120)
@given(
    labels=st.booleans(),
    dims=st.none() | st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3),
    magic=st.sampled_from([0x801, 0x803, 0x802, 0x80803, 0]),
    cut=st.none() | st.integers(0, 2400),
    flips=st.lists(st.tuples(st.integers(0, 2400), st.integers(0, 255)), max_size=4),
    extra=st.binary(max_size=8),
    gz=st.sampled_from(["raw", "gz", "gz-cut", "gz-flip"]),
)
def test_idx_reader_mutated_files(folder, labels, dims, magic, cut, flips, extra, gz):
    array = LABELS if labels else IMAGES
    data = bytearray(idx(array, magic, dims[: array.ndim] if dims else None))
    for at, value in flips:
        if at < len(data):
            data[at] = value
    data = bytes(data[:cut]) + extra if cut is not None else bytes(data) + extra
    if gz != "raw":
        data = bytearray(gzip.compress(data))
        if gz == "gz-cut":
            data = data[: max(0, len(data) - 1 - (cut or 0) % len(data))]
        elif gz == "gz-flip":
            data[(cut or 0) % len(data)] ^= 0x5A
    path = folder / ("x.gz" if gz != "raw" else "x")
    path.write_bytes(bytes(data))
    got = read_either(path, labels)
    if got is not None:  # whatever was accepted is exactly what the header says it is
        assert got.dtype == np.uint8 and got.shape[1:] == (() if labels else (28, 28))
        if labels:
            assert int(got.max(initial=0)) <= 9


@examples(60)
@given(data=st.binary(max_size=3000), name=st.sampled_from(["y", "y.gz"]))
def test_idx_reader_random_bytes(folder, data, name):
    path = folder / name
    path.write_bytes(data)
    read_either(path, labels=False)
    read_either(path, labels=True)


def test_a_header_claiming_a_billion_images_is_refused_before_reading(tmp_path):
    header = idx(np.zeros(0, np.uint8), 0x803, (10**9, 28, 28))
    for name, data in (("raw", header), ("bomb.gz", gzip.compress(header + b"\0" * 10**6))):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(FmnistError, match="claims 1,000,000,000 items"):
            read_images(path)


BOUNDED = textwrap.dedent(
    r"""
    import gzip, io, resource, sys, zlib
    from fmnist_alexnet.data.idx import read_images, sha256
    from fmnist_alexnet.errors import FmnistError

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def bomb(path, header, n_bytes):  # gzip of n_bytes zeros, built 4 MiB at a time
        packer, zero = zlib.compressobj(1, zlib.DEFLATED, 31), bytes(1 << 22)
        with open(path, "wb") as out:
            out.write(packer.compress(header))
            for _ in range(n_bytes // len(zero)):
                out.write(packer.compress(zero))
            out.write(packer.flush())

    folder = sys.argv[1]
    header = (0x803).to_bytes(4, "big") + (10**6).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    bomb(folder + "/claims.gz", header, 1 << 24)
    bomb(folder + "/zeros.gz", b"", 1 << 25)
    before = peak_mb()
    small = lambda path: sha256(path, limit=1 << 24)  # the check of MAX_IDX_BYTES, smaller
    for call, name in ((read_images, "claims.gz"), (read_images, "zeros.gz"), (small, "zeros.gz")):
        try:
            call(folder + "/" + name)
            print("accepted", name)
        except FmnistError as exc:
            print("refused", str(exc))
    print("peak_growth_mb", peak_mb() - before)

    from fmnist_alexnet.infer.predict import ImageError, prepare_image

    def png(width, height, rows):  # a grayscale PNG of zeros, built without its pixels
        def chunk(kind, data):
            body = kind + data
            return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
        packer, row = zlib.compressobj(9), bytes(width + 1 if rows else 0)
        idat = b"".join(packer.compress(row) for _ in range(rows)) + packer.flush()
        ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
        chunks = chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
        return b"\x89PNG\r\n\x1a\n" + chunks

    before = peak_mb()
    for width, height in ((9000, 5000), (40000, 40000), (2**31 - 1, 1)):
        try:
            prepare_image(png(width, height, 0), name=f"{width}x{height}")
            print("accepted", width, height)
        except ImageError as exc:
            print("refused", str(exc))
    print("peak_growth_mb", peak_mb() - before)
    before = peak_mb()
    prepare_image(png(6000, 6000, 6000), name="6000x6000")  # 36 Mpx: under the cap, decoded
    print("largest_accepted_growth_mb", peak_mb() - before)
    """
)


def test_bombs_are_refused_with_memory_bounded(tmp_path):
    """In a child process, so its peak memory is its own: gzip bombs (32 MiB of zeros, and
    a header claiming a million images) and image bombs (PNGs of a few KB claiming 45 Mpx,
    1,600 Mpx and 2**31 x 1) are refused while the process grows by less than 64 MB; the
    largest image accepted (36 Mpx, decoded) costs less than 256 MB (825 MB before images
    were box-averaged to 2048 px ahead of any float copy)."""
    done = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    refused = [line for line in lines if line.startswith("refused")]
    assert len(refused) == 6, lines
    assert "claims 1,000,000 items" in refused[0]
    assert "bad IDX magic" in refused[1]
    assert f"more than {1 << 24:,} bytes" in refused[2]
    assert all("too large" in line for line in refused[3:])
    growth = [float(line.split()[1]) for line in lines if line.startswith("peak_growth_mb")]
    assert len(growth) == 2 and all(mb < 64 for mb in growth), lines
    largest = float(lines[-1].split()[1])
    assert lines[-1].startswith("largest_accepted_growth_mb") and largest < 256, lines


def test_sha256_streams_gzip(tmp_path):
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(b"abc" * 1000))
    import hashlib

    assert sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


# ---------------------------------------------------------------- images


def _encoded(fmt: str, image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _base_images() -> dict[str, bytes]:
    gradient = Image.fromarray(
        (np.add.outer(np.arange(30), np.arange(40)) * 3 % 256).astype(np.uint8)
    ).convert("RGB")
    frames = [gradient, gradient.rotate(90)]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    palette = gradient.convert("P")
    palette.info["transparency"] = 0
    return {
        "png": _encoded("PNG", gradient),
        "jpeg": _encoded("JPEG", gradient),
        "gif": _encoded("GIF", gradient),
        "webp": _encoded("WEBP", gradient),
        "tiff": _encoded("TIFF", gradient),
        "bmp": _encoded("BMP", gradient),
        "cmyk.jpeg": _encoded("JPEG", gradient.convert("CMYK")),
        "16bit.png": _encoded("PNG", Image.fromarray(np.full((30, 40), 40000, np.uint16))),
        "palette.png": _encoded("PNG", palette),
        "animated.gif": _encoded("GIF", frames[0], save_all=True, append_images=frames[1:]),
        "exif.jpeg": _encoded("JPEG", gradient, exif=exif),
        "la.png": _encoded("PNG", gradient.convert("LA")),
        "1x1.png": _encoded("PNG", Image.new("L", (1, 1), 200)),
        "1x20000.png": _encoded("PNG", Image.new("L", (1, 20000), 200)),
        "20000x1.tiff": _encoded("TIFF", Image.new("L", (20000, 1), 10)),
    }


BASE = _base_images()


def prepared_or_refused(data: bytes, name: str) -> None:
    try:
        image = prepare_image(data, name=name)
    except ImageError as exc:
        assert str(exc).startswith(name) and "\n" not in str(exc)
        return
    assert image.shape == (28, 28) and image.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(BASE))
def test_every_kind_of_image_is_prepared(name):
    image = prepare_image(BASE[name], name=name)
    assert image.shape == (28, 28) and image.dtype == np.uint8


@examples(150)
@given(
    name=st.sampled_from(sorted(BASE)),
    cut=st.none() | st.integers(0, 5000),
    flips=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=6),
    junk=st.binary(max_size=64),
)
def test_mutated_images_give_a_prediction_input_or_a_per_file_error(name, cut, flips, junk):
    data = bytearray(BASE[name])
    for at, value in flips:
        data[at % len(data)] = value
    data = bytes(data[:cut] if cut is not None else data) + junk
    prepared_or_refused(data, name)


@examples(40)
@given(data=st.binary(max_size=2000))
def test_random_bytes_as_an_image(data):
    prepared_or_refused(data, "random")


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def template():
    """A real checkpoint's spec and config (weights replaced by the tests)."""
    config = tiny_config("unused")
    return {"spec": ModelSpec.from_config(config).to_dict(), "config": config.to_dict()}


_MODELS: dict = {}


def _model_for(spec: ModelSpec):
    key = (spec.arch, spec.num_classes)
    if key not in _MODELS:
        _MODELS[key] = spec.build_model()
    return _MODELS[key]


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_subnormal=False)
    | st.text(max_size=8)
)
tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=3),
    st.sampled_from([torch.float32, torch.int64, torch.bool, torch.float16, torch.complex64]),
)
values = st.recursive(
    scalars | tensors,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


SPEC_KEYS = ["arch", "image_size", "num_classes", "mean", "std", "class_names", "precision",
             "resize_mode"]  # fmt: skip
CONFIG_KEYS = ["epochs", "lr", "arch", "image_size", "unknown_key", "batch_size", "seed"]


@examples(80)
@given(
    version=st.sampled_from([3, 2, 1, 4, 99, "3", None, 3.5, -1]),
    drop=st.lists(st.sampled_from(["spec", "config", "model", "format_version"]), max_size=2),
    spec_changes=st.dictionaries(st.sampled_from(SPEC_KEYS), scalars | values, max_size=2),
    config_changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), scalars, max_size=2),
    model=st.dictionaries(st.text(max_size=8), values, max_size=3) | values,
    extra=st.dictionaries(st.text(max_size=6), values, max_size=2),
)
def test_damaged_checkpoints_are_one_clear_error(
    folder, template, version, drop, spec_changes, config_changes, model, extra
):
    """Random contracts, configs, versions and small "weights"; never a crash. Whatever
    loads builds and takes its weights, or says why not (the real-sized weights are below)."""
    state = {
        "format_version": version,
        "spec": {**template["spec"], **spec_changes},
        "config": {**template["config"], **config_changes},
        "model": model,
        **extra,
    }
    for key in drop:
        state.pop(key, None)
    assert_loads_or_one_line(folder / "damaged.pt", state)


@pytest.mark.parametrize(
    "kind", ["real-shapes", "wrong-shape", "missing", "extra", "dtype", "not-tensors"]
)
def test_weights_of_the_wrong_shape_or_kind_are_one_clear_error(folder, template, kind):
    state = {"format_version": 3, **template, "model": _weights(kind)}
    assert_loads_or_one_line(folder / f"{kind}.pt", state, must_load=kind in ("real-shapes",))


def assert_loads_or_one_line(path, state, must_load=False):
    torch.save(state, path)
    try:
        checkpoint = load_checkpoint(path)
        load_weights(_model_for(checkpoint.spec), checkpoint.model, path, checkpoint.spec.arch)
    except FmnistError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        assert not must_load, str(exc)
    finally:
        path.unlink()


def _weights(kind: str) -> dict:
    shapes = {name: tensor.shape for name, tensor in _reference_state().items()}
    if kind == "not-tensors":
        return {name: [1.0] for name in shapes}
    weights = dict(_reference_state())
    first = next(iter(shapes))
    if kind == "wrong-shape":
        weights[first] = torch.zeros(3, 3)
    elif kind == "missing":
        del weights[first]
    elif kind == "extra":
        weights["classifier.99.weight"] = torch.zeros(2)
    elif kind == "dtype":
        weights[first] = torch.zeros(shapes[first], dtype=torch.int64)
    return weights


def _reference_state():
    spec = ModelSpec.from_config(tiny_config("unused"))
    return _model_for(spec).state_dict()


@examples(60)
@given(
    how=st.sampled_from(["truncate", "flip", "flip-end", "junk-before", "junk-after", "random"]),
    where=st.floats(0, 1, allow_subnormal=False),  # training flushes denormals in-process
    noise=st.binary(min_size=1, max_size=64),
)
def test_files_damaged_byte_by_byte_are_one_clear_error(folder, template, how, where, noise):
    """Whatever the bytes (torch.save's zip cut short or overwritten, junk around it, or no
    checkpoint at all), loading gives a checkpoint or one line naming the file. A text file
    once made torch's unpickler raise a bare KeyError."""
    path = folder / "bytes.pt"
    torch.save({"format_version": 3, **template, "model": {"w": torch.arange(6.0)}}, path)
    whole = path.read_bytes()
    at = int(where * len(whole))
    end = len(whole) - 1 - int(where * 63)  # in the zip's end records
    damaged = {
        "truncate": whole[:at],
        "flip": whole[:at] + noise + whole[at + len(noise) :],
        "flip-end": whole[:end] + noise[:4] + whole[end + len(noise[:4]) :],
        "junk-before": noise + whole,
        "junk-after": whole + noise,
        "random": noise,
    }[how]
    path.write_bytes(damaged)
    try:
        load_checkpoint(path)
    except FmnistError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        assert "weights_only" not in str(exc)  # no advice to load it unsafely
    finally:
        path.unlink()


class _RunsCode:
    """Unpickling this would create the marker file: the test proves it never happens."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch.save", "nested", "pickle-2", "pickle-5", "eval"])
def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs_it(tmp_path, template, how):
    marker = tmp_path / "code-ran"
    payload = _RunsCode(marker)
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"model": payload, **template}, path)
    elif how == "nested":
        torch.save({"model": {"features.0.weight": [payload]}, **template}, path)
    elif how == "eval":
        evil = pickle.dumps({"model": _Eval(f"open({str(marker)!r}, 'w')")}, protocol=2)
        path.write_bytes(evil)
    else:
        path.write_bytes(pickle.dumps({"model": payload}, protocol=int(how[-1])))
    with pytest.raises(FmnistError, match="holds code or objects .* never holds") as refused:
        load_checkpoint(path)
    assert "weights_only" not in str(refused.value)  # no advice to load it unsafely
    assert not marker.exists()


class _Eval:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


def test_a_real_checkpoint_still_loads_after_all_this(tmp_path, template):
    spec = ModelSpec.from_dict(template["spec"], "template")
    checkpoint = Checkpoint(
        spec=spec, config=resolve("quick", {}), model=_reference_state(), epoch=1, step=8
    )
    save_checkpoint(tmp_path / "ok.pt", checkpoint)
    assert load_checkpoint(tmp_path / "ok.pt").step == 8


# ---------------------------------------------------------------- numeric flags


def _numeric_flags():
    """(command, positional arguments, flag, converter) for every numeric flag."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    positional = {
        "evaluate": ["x.pt"],
        "predict": ["x.pt", "y.png"],
        "serve": ["x.pt"],
        "calibrate": ["x.pt"],
        "export": ["x.pt", "--format", "onnx", "--out", "x.onnx"],
    }
    found = []
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if getattr(action.type, "__name__", "") in ("integer", "number"):
                found.append((name, positional.get(name, []), action.option_strings[-1]))
    return found


NUMERIC_FLAGS = _numeric_flags()
PARSER = build_parser()
awkward = st.sampled_from(
    ["0", "-0", "-1", "1e400", "-1e400", "nan", "inf", "-inf", "", " ", "0x10", "1_000", "٣",
     "9" * 40, "1e-400", "5e-324", "2147483648", "4294967296", "1.5", "abc", "1 2", "\n"]
)  # fmt: skip
numbers = (
    st.integers(-(10**30), 10**30).map(str)
    | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False).map(repr)
    | st.text(max_size=10)
    | awkward
)


def test_every_numeric_flag_is_typed():
    """Each int/float flag of every command parses through argtypes (so the fuzz sees it)."""
    assert len(NUMERIC_FLAGS) >= 60
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.type not in (int, float), (name, action.option_strings)


@examples(300)
@given(target=st.sampled_from(NUMERIC_FLAGS), value=numbers)
def test_numeric_flags_refuse_nonsense_in_one_line(target, value):
    command, positional, flag = target
    argv = [command, *positional, f"{flag}={value}"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = PARSER.parse_args(argv)
    except SystemExit as exc:
        err = stderr.getvalue()
        assert exc.code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("fmnist-alexnet: error: argument ") and "Traceback" not in err
        return
    parsed = getattr(args, flag.lstrip("-").replace("-", "_"))
    assert isinstance(parsed, int | float) and np.isfinite(parsed)
    assert not isinstance(parsed, int) or -(2**31) <= parsed < 2**31
    try:
        float(value)
    except ValueError:
        pytest.fail(f"{flag}={value!r} is not a number, yet it parsed")
    if command in ("train", "tune", "bench") and flag[2:].replace("-", "_") in _CONFIG_FIELDS:
        try:  # the config's own checks: ranges and relations between settings
            resolve("quick", {flag[2:].replace("-", "_"): parsed})
        except FmnistError as exc:
            assert "\n" not in str(exc)


_CONFIG_FIELDS = set(resolve("quick", {}).to_dict())


@examples(200)
@given(
    value=numbers | st.from_regex(r"\s*[0-9.]*[hH]?\s*[0-9.]*[mM]?[0-9.]*[sS]?\s*", fullmatch=True)
)
def test_the_duration_flag_parses_to_seconds_or_refuses_in_one_line(value):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = PARSER.parse_args(["train", f"--time-budget={value}"])
    except SystemExit as exc:
        err = stderr.getvalue()
        assert exc.code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("fmnist-alexnet: error: argument --time-budget: ")
        return
    assert isinstance(args.time_budget, float) and 0 <= args.time_budget < float("inf")
    resolve("quick", {"time_budget": args.time_budget})


def test_a_recipe_file_cannot_bring_in_what_flags_refuse():
    for field, value in (("lr", float("nan")), ("std", float("inf")), ("epochs", 2**40)):
        with pytest.raises(FmnistError, match=f"--{field.replace('_', '-')} must be"):
            resolve("quick", {field: value})


def test_zlib_and_gzip_errors_are_caught(folder):
    """A gzip stream whose deflate data is damaged mid-way (zlib.error) names the file."""
    good = gzip.compress(idx(IMAGES, 0x803))
    broken = bytearray(good)
    broken[30:34] = b"\xff\xff\xff\xff"
    path = folder / "mid.gz"
    path.write_bytes(bytes(broken))
    assert read_either(path, labels=False) is None
