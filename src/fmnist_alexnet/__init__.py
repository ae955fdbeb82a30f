"""AlexNet on Fashion-MNIST: train, evaluate and benchmark, fast and with safe checkpoints."""

from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import AlexNet, AlexNetPaper, build_model

__version__ = "0.1.0"
__all__ = ["AlexNet", "AlexNetPaper", "FmnistError", "build_model", "__version__"]
