"""predict on people's image files agrees with the model on the original test images."""

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.cli import main
from fmnist_alexnet.data.sources import load_splits
from fmnist_alexnet.infer.predict import find_images, predict_images, prepare_image

N = 60


@pytest.fixture(scope="module")
def trained(tiny_run):
    return tiny_run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def originals(real_data):
    images, labels = load_splits(real_data)["test"]
    return images[:N], labels[:N]


@pytest.fixture(scope="module")
def reference(trained, originals):
    loaded = load_model(trained, "cpu")
    logits = loaded.logits(torch.from_numpy(originals[0].copy())[:, None])
    return loaded, logits.argmax(1).numpy()


def save_all(folder, images, make, suffix, **save_kwargs):
    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}{suffix}"
        make(image).save(path, **save_kwargs)
        paths.append(path)
    return paths


def on_white_canvas(image, canvas=512, longest=400, margin=(40, 70)):
    """A test image as a product photo: dark garment on white, large, off centre."""
    negated = Image.fromarray(255 - image).resize((longest, longest), Image.BICUBIC)
    out = Image.new("L", (canvas, canvas), 255)
    out.paste(negated, margin)
    return out.convert("RGB")


def top1(results):
    return np.array([result.top[0].label for result in results])


def test_png_of_test_images_gives_exactly_the_models_predictions(tmp_path, originals, reference):
    loaded, expected = reference
    paths = save_all(tmp_path / "png", originals[0], Image.fromarray, ".png")
    for path, image in zip(paths, originals[0], strict=True):
        assert np.array_equal(prepare_image(path), image)  # 28x28 keeps its framing
    results = predict_images(loaded, [tmp_path / "png"], top_k=3)
    assert [r.path for r in results] == [str(p) for p in paths]
    assert np.array_equal(top1(results), expected)
    assert all(len(r.top) == 3 and r.top[0].prob >= r.top[1].prob for r in results)


def test_inverted_jpeg_on_white_512_lands_where_the_model_expects(tmp_path, originals, reference):
    loaded, expected = reference
    save_all(tmp_path / "jpg", originals[0], on_white_canvas, ".jpg", quality=95)
    results = predict_images(loaded, [tmp_path / "jpg"])
    agreement = (top1(results) == expected).mean()
    assert agreement >= 0.85, agreement
    prepared = prepare_image(tmp_path / "jpg" / "000.jpg")
    assert prepared.shape == (28, 28) and prepared[0].max() < 40  # background is black now


def test_extra_border_is_trimmed(tmp_path, originals, reference):
    loaded, expected = reference

    def bordered(image):
        out = Image.new("L", (80, 60), 0)
        out.paste(Image.fromarray(image), (30, 20))
        return out

    save_all(tmp_path / "border", originals[0], bordered, ".png")
    agreement = (top1(predict_images(loaded, [tmp_path / "border"])) == expected).mean()
    assert agreement >= 0.9, agreement


@pytest.mark.parametrize(
    ("suffix", "convert", "kwargs"),
    [
        (".bmp", lambda im: im.convert("RGB"), {}),
        (".webp", lambda im: im.convert("RGB"), {"lossless": True}),
        (".tiff", lambda im: im, {}),
        (".gif", lambda im: im.convert("P"), {}),
        (".png", lambda im: Image.fromarray(np.asarray(im).astype(np.uint16) * 257), {}),
    ],
    ids=["bmp-rgb", "webp", "tiff", "gif-palette", "png-16bit"],
)
def test_formats_and_modes(tmp_path, originals, reference, suffix, convert, kwargs):
    loaded, expected = reference
    paths = save_all(
        tmp_path / "f", originals[0][:12], lambda a: convert(Image.fromarray(a)), suffix, **kwargs
    )
    for path, image in zip(paths, originals[0][:12], strict=True):
        assert np.abs(prepare_image(path).astype(int) - image).max() <= 1, path
    assert np.array_equal(top1(predict_images(loaded, paths)), expected[:12])


def test_transparent_background_and_exif_rotation(tmp_path, originals):
    image = originals[0][0]
    # A dark garment on a transparent background: flattened onto white, then negated.
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = (255 - image)[..., None]
    rgba[..., 3] = np.where(image > 0, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert np.abs(prepare_image(tmp_path / "alpha.png").astype(int) - image).max() <= 1
    # A JPEG stored rotated with an EXIF orientation that says "rotate back".
    big = Image.fromarray(image).resize((280, 280), Image.NEAREST)
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates 90 degrees clockwise
    stored = big.transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / "rot.jpg", exif=exif, quality=98)
    stored.save(tmp_path / "sideways.jpg", quality=98)
    big.save(tmp_path / "upright.jpg", quality=98)
    upright = prepare_image(tmp_path / "upright.jpg", invert="no").astype(int)
    assert np.abs(prepare_image(tmp_path / "rot.jpg", invert="no") - upright).mean() < 2
    assert np.abs(prepare_image(tmp_path / "sideways.jpg", invert="no") - upright).mean() > 10


def test_a_corrupt_exif_block_is_ignored_without_a_warning(tmp_path, originals):
    """Pillow warns on stderr about EXIF it cannot read and still decodes the pixels;
    predict uses them unrotated and prints nothing of Pillow's."""
    image = Image.fromarray(originals[0][0]).resize((280, 280), Image.NEAREST)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "plain.jpg", quality=98)
    image.save(tmp_path / "corrupt.jpg", quality=98, exif=exif.tobytes()[:-6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        corrupt = prepare_image(tmp_path / "corrupt.jpg", invert="no")
    assert np.array_equal(corrupt, prepare_image(tmp_path / "plain.jpg", invert="no"))


def test_broken_files_are_reported_and_the_rest_predicted(tmp_path, originals, trained, capsys):
    folder = tmp_path / "mixed"
    save_all(folder, originals[0][:3], Image.fromarray, ".png")
    (folder / "notes.png").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(originals[0][3]).resize((200, 200)).save(buffer, format="PNG")
    (folder / "cut.png").write_bytes(buffer.getvalue()[:300])
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link: reported
    save_all(folder / "album.png", originals[0][3:4], Image.fromarray, ".png")  # a folder
    code = main(
        [
            "predict",
            str(trained),
            str(folder),
            str(tmp_path / "missing.png"),
            "--json",
            "--device",
            "cpu",
        ]
    )
    results = json.loads(capsys.readouterr().out)
    assert code == 1
    errors = {r["path"].rsplit("/", 1)[1]: r["error"] for r in results if "error" in r}
    assert set(errors) == {"notes.png", "cut.png", "missing.png", "gone.png"}
    assert "not an image file" in errors["notes.png"] and "file not found" in errors["missing.png"]
    assert "file not found" in errors["gone.png"]
    assert sum("top" in r for r in results) == 4  # 3 + the one inside album.png/


def test_a_folder_yields_its_image_files_but_no_fifo(tmp_path):
    """Reading a FIFO found in a folder would block predict forever; one named on the
    command line is read (``predict RUN <(curl ...)`` passes a pipe)."""
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.png")
    assert find_images([tmp_path]) == [tmp_path / "a.png", tmp_path / "sub" / "b.JPG"]
    assert find_images([tmp_path / "pipe.png"]) == [tmp_path / "pipe.png"]


def test_decompression_bomb_is_refused(tmp_path, trained, capsys):
    Image.new("L", (9000, 5000)).save(tmp_path / "huge.png")
    code = main(["predict", str(trained), str(tmp_path / "huge.png"), "--json"])
    (result,) = json.loads(capsys.readouterr().out)
    assert code == 1 and "too large" in result["error"]


def test_csv_and_text_output(tmp_path, originals, trained, capsys):
    save_all(tmp_path / "p", originals[0][:2], Image.fromarray, ".png")
    assert main(["predict", str(trained), str(tmp_path / "p"), "--csv", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,rank,label,class,prob,error,ood" and len(lines) == 1 + 2 * 2
    assert main(["predict", str(trained), str(tmp_path / "p" / "000.png")]) == 0
    assert capsys.readouterr().out.count(":") == 1


def test_a_run_folder_stands_for_its_best_pt(tmp_path, originals, trained, capsys):
    save_all(tmp_path / "p", originals[0][:3], Image.fromarray, ".png")
    calls = {
        "predict": [str(tmp_path / "p"), "--json"],
        "evaluate": ["--json", "--limit-eval", "32"],
    }
    for command, args in calls.items():
        outputs = []
        for model in (trained, trained.parent.parent):  # best.pt, then its run folder
            assert main([command, str(model), *args]) == 0
            outputs.append(json.loads(capsys.readouterr().out))
        assert outputs[0] == outputs[1], command
    assert main(["predict", str(tmp_path), str(tmp_path / "p")]) == 2  # a folder, not a run
    assert "a folder without checkpoints/best.pt" in capsys.readouterr().err


def test_bad_values(trained, capsys, tmp_path):
    assert main(["predict", str(trained), str(tmp_path), "--top-k", "11"]) == 2
    assert "--top-k must be in 1..10" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.pt"), str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_the_public_api_and_the_readmes_example(tmp_path, originals, tiny_run, capsys):
    """Every name the package exports imports, and the README's Python example runs as
    written (on a run folder and a folder of images of its own)."""
    import fmnist_alexnet

    for name in fmnist_alexnet.__all__:
        assert getattr(fmnist_alexnet, name) is not None, name
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    (example,) = [
        block.split("\n", 1)[1]
        for block in readme.split("```python")[1:]
        for block in [block.split("```")[0]]
        if "predict_images" in block
    ]
    save_all(tmp_path / "photos", originals[0][:3], Image.fromarray, ".png")
    example = example.replace('"runs/X"', repr(str(tiny_run)))
    example = example.replace('"photos/"', repr(str(tmp_path / "photos")))
    exec(compile(example, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("ClassScore(label=" in line for line in lines)
