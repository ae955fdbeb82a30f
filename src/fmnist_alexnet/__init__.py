"""AlexNet on Fashion-MNIST: train, evaluate and benchmark, fast and with safe checkpoints."""

from fmnist_alexnet.checkpoint import LoadedModel, load_model
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.predict import predict_images, prepare_image
from fmnist_alexnet.model import AlexNet, AlexNetPaper, build_model
from fmnist_alexnet.spec import ModelSpec

__version__ = "0.1.0"
__all__ = [
    "AlexNet",
    "AlexNetPaper",
    "FmnistError",
    "LoadedModel",
    "ModelSpec",
    "build_model",
    "load_model",
    "predict_images",
    "prepare_image",
    "__version__",
]
