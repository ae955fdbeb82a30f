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
# Train-set pixel statistics on [0, 1] (NOTES.md).
MEAN = 0.2860
STD = 0.3530
