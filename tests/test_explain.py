"""Why the model answered: occlusion heatmaps that pass sanity checks that can fail, written by
`predict --explain` and returned by the API's explain=true."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.explain_check import area, deletion_curve, randomised, rank_correlations
from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.cli import main
from fmnist_alexnet.data.sources import load_splits
from fmnist_alexnet.infer.explain import VIEW_SCALE, heatmap_png, occlusion_maps

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def model(taught_run):
    return load_model(taught_run, "cpu", "fp32")


@pytest.fixture(scope="module")
def test_images(real_data):
    images = load_splits(real_data)["test"][0]
    return torch.from_numpy(images[:100].copy())[:, None]


@pytest.fixture(scope="module")
def maps(model, test_images):
    return occlusion_maps(model, test_images)


def test_a_patch_of_background_changes_nothing(model, test_images, maps):
    assert maps.shape == (100, 28, 28) and maps.dtype == torch.float32
    # a pixel whose every covering 4x4 patch is already black: occluding it is no change
    # (but for float rounding: a batch of other images may round a logit differently)
    image = test_images[:, 0].float()
    black = torch.nn.functional.max_pool2d(image[:, None], 7, stride=1, padding=3)[:, 0] == 0
    assert black.any() and maps[black].abs().max() < 1e-5
    assert maps[~black].abs().amax((0,)).max() > 1e-2


def test_deleting_the_most_attributed_pixels_first_hurts_more_than_random(model, test_images, maps):
    targets = model.logits(test_images).argmax(1)
    ranked = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    shuffled = torch.stack(
        [torch.randperm(784, generator=torch.Generator().manual_seed(i)) for i in range(100)]
    )
    by_map = deletion_curve(model, test_images, ranked, targets, steps=14)
    by_chance = deletion_curve(model, test_images, shuffled, targets, steps=14)
    assert by_map[0] == by_chance[0]  # nothing deleted yet
    assert area(by_map) < 0.8 * area(by_chance), (by_map, by_chance)


def test_a_network_with_random_weights_gives_other_heatmaps(model, test_images, maps):
    targets = model.logits(test_images).argmax(1)
    again = rank_correlations(maps, occlusion_maps(model, test_images, targets))
    assert torch.allclose(again, torch.ones(100, dtype=again.dtype))  # deterministic
    random_maps = occlusion_maps(randomised(model), test_images, targets)
    correlations = rank_correlations(maps, random_maps)
    assert float(correlations[correlations.isfinite()].mean()) < 0.5


def test_the_png_shows_the_input_with_the_evidence_in_red_to_yellow():
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 8:20] = 200
    attribution = np.zeros((28, 28), np.float32)
    attribution[10:14, 10:14] = 0.3
    attribution[0:4, 0:4] = -0.3  # against the class: not coloured
    picture = np.asarray(Image.open(io.BytesIO(heatmap_png(image, attribution))))
    assert picture.shape == (28 * VIEW_SCALE, 28 * VIEW_SCALE, 3)
    hot = picture[12 * VIEW_SCALE, 12 * VIEW_SCALE]
    assert hot[0] > 200 and hot[1] > 150 and hot[2] < 60  # yellow where it is strongest
    gray = picture[16 * VIEW_SCALE, 16 * VIEW_SCALE]
    assert gray[0] == gray[1] == gray[2] > 0  # the garment, uncoloured
    assert picture[VIEW_SCALE, VIEW_SCALE].tolist() == [0, 0, 0]


def test_predict_explain_writes_one_png_per_image(taught_run, test_images, tmp_path, capsys):
    for folder in ("a", "b"):  # the same file name twice
        (tmp_path / folder).mkdir()
        Image.fromarray(test_images[0, 0].numpy()).save(tmp_path / folder / "shoe.png")
    Image.fromarray(test_images[1, 0].numpy()).save(tmp_path / "a" / "other.png")
    (tmp_path / "a" / "broken.png").write_text("not an image")
    out = tmp_path / "why"
    argv = ["predict", str(taught_run), str(tmp_path / "a"), str(tmp_path / "b")]
    assert main([*argv, "--explain", str(out), "--json"]) == 1  # the broken file
    rows = json.loads(capsys.readouterr().out)
    explained = [row.get("explanation") for row in rows]
    assert explained == [
        None,
        str(out / "other.png"),
        str(out / "shoe.png"),
        str(out / "shoe-2.png"),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["other.png", "shoe-2.png", "shoe.png"]
    assert (out / "shoe.png").read_bytes() == (out / "shoe-2.png").read_bytes()  # same image
    assert Image.open(out / "other.png").size == (224, 224)
    assert (
        main([*argv[:2], str(tmp_path / "b"), "--explain", str(tmp_path / "b" / "shoe.png")]) == 2
    )
    assert capsys.readouterr().err.count("\n") == 1  # a file where the folder should go


def test_the_api_returns_the_heatmap_on_request(taught_run, test_images):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fmnist_alexnet.serve.app import create_app
    from fmnist_alexnet.serve.loading import load_served

    model, info = load_served(taught_run, device="cpu", precision="fp32")
    buffer = io.BytesIO()
    Image.fromarray(test_images[2, 0].numpy()).save(buffer, format="PNG")
    files = [("files", ("x.png", buffer.getvalue(), "image/png"))]
    with TestClient(create_app(model, info)) as client:
        plain = client.post("/v1/predict", files=files).json()["results"][0]
        assert "explanation" not in plain
        result = client.post("/v1/predict?explain=true", files=files).json()["results"][0]
        assert client.get("/v1/model").json()["calibrated"] is True
    url = result["explanation"]
    assert url.startswith("data:image/png;base64,")
    png = base64.b64decode(url.split(",", 1)[1])
    expected = heatmap_png(
        test_images[2, 0].numpy(),
        occlusion_maps(model, test_images[2:3], torch.tensor([result["top"][0]["label"]]))[
            0
        ].numpy(),
    )
    assert png == expected
