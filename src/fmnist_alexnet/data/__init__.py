"""Fashion-MNIST: IDX files, where they are, and the on-device batch pipeline."""

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Mean and standard deviation of the 60,000 training images' pixels on [0, 1].
MEAN = 0.2860
STD = 0.3530
