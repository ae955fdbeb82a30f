import pytest
import torch

from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import (
    AlexNet,
    build_model,
    check_image_size,
    count_parameters,
    initialize,
)

SEED_KEYS = {f"features.{i}.{kind}" for i in (0, 3, 6, 8, 10) for kind in ("weight", "bias")} | {
    f"classifier.{i}.{kind}" for i in (1, 4, 6) for kind in ("weight", "bias")
}


def test_seed_alexnet_parameter_count_and_keys():
    model = AlexNet(num_classes=10)
    assert count_parameters(model) == 57_029_322
    assert set(model.state_dict()) == SEED_KEYS


def test_seed_alexnet_layers_match_the_readme():
    f = build_model("alexnet").features
    assert (f[0].in_channels, f[0].out_channels, f[0].kernel_size, f[0].stride, f[0].padding) == (
        1,
        64,
        (11, 11),
        (4, 4),
        (2, 2),
    )
    assert [f[i].out_channels for i in (0, 3, 6, 8, 10)] == [64, 192, 384, 256, 256]
    assert [(f[i].kernel_size, f[i].stride) for i in (2, 5, 12)] == [(3, 2)] * 3


@pytest.mark.parametrize("size", [63, 64, 224])
def test_output_shape_at_any_size_from_63(size):
    out = build_model("alexnet").eval()(torch.zeros(2, 1, size, size))
    assert out.shape == (2, 10)


def test_paper_variant_has_6400_features_at_224_and_same_keys():
    model = build_model("alexnet-paper")
    assert [model.features[i].out_channels for i in (0, 3, 6, 8, 10)] == [96, 256, 384, 384, 256]
    assert model.features[0].padding == (1, 1)
    assert model.features(torch.zeros(1, 1, 224, 224)).flatten(1).shape[1] == 6400
    assert model.classifier[1].in_features == 6400
    assert set(model.state_dict()) == SEED_KEYS
    assert model.eval()(torch.zeros(1, 1, 65, 65)).shape == (1, 10)


def test_too_small_inputs_are_refused_with_the_minimum():
    with pytest.raises(FmnistError, match="minimum is 63"):
        check_image_size("alexnet", 62)
    with pytest.raises(FmnistError, match="minimum is 65"):
        check_image_size("alexnet-paper", 64)
    with pytest.raises(RuntimeError):  # the network itself really does collapse below 63
        build_model("alexnet").eval()(torch.zeros(1, 1, 62, 62))


def test_unknown_arch():
    with pytest.raises(FmnistError, match="unknown architecture"):
        build_model("vgg")


@pytest.mark.parametrize("arch", ["alexnet", "alexnet-paper"])
def test_xavier_redraws_every_weight_from_glorot_uniform_and_keeps_biases(arch):
    torch.manual_seed(0)
    default = build_model(arch)
    torch.manual_seed(0)
    xavier = initialize(build_model(arch), "xavier")
    layers = [m for m in xavier.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 8
    for layer in layers:
        fan_in = layer.weight[0].numel()
        fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5
        w = layer.weight.detach()
        assert w.abs().max() <= bound
        # Uniform on [-bound, bound] has std bound / sqrt(3); PyTorch's default is far smaller
        # for the wide layers, so this tells the two apart.
        assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
    before, after = default.state_dict(), xavier.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith("bias"))
    assert not any(torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    torch.manual_seed(0)
    untouched = initialize(build_model(arch), "default").state_dict()
    assert all(torch.equal(before[k], untouched[k]) for k in before)


def test_unknown_init():
    with pytest.raises(FmnistError, match="unknown initialisation 'he'"):
        initialize(build_model("alexnet"), "he")


def test_d2l_variant_is_the_paper_widths_with_dropout_after_each_hidden_relu():
    """d2l's classifier: Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear (torchvision's, and
    alexnet-paper's, drops the inputs of the two hidden layers instead)."""
    d2l, paper = build_model("alexnet-d2l"), build_model("alexnet-paper")
    kinds = [type(layer).__name__ for layer in d2l.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [type(layer).__name__ for layer in paper.classifier][:2] == ["Dropout", "Linear"]
    assert str(d2l.features) == str(paper.features)
    assert count_parameters(d2l) == count_parameters(paper) == 46_764_746
    assert {k for k in d2l.state_dict() if k.startswith("classifier")} == {
        f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
    }
    x = torch.rand(2, 1, 224, 224)
    assert d2l.eval()(x).shape == (2, 10)
    torch.manual_seed(0)
    d2l.train()
    assert not torch.equal(d2l(x), d2l(x))  # dropout is live in training
