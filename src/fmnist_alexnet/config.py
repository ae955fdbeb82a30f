"""One dataclass for a run, the presets, and validation of every value."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from fmnist_alexnet.argtypes import INT_MAX
from fmnist_alexnet.data import MEAN, STD
from fmnist_alexnet.data.batches import RESIZE_MODES
from fmnist_alexnet.data.sources import DEBIAN_DIR, ENV_VAR, TORCHVISION_ROOT
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import ARCHS, INITS, check_image_size
from fmnist_alexnet.runtime import DEVICES, PRECISIONS

MODEL, DATA, OPTIM, AUGMENT, SCHEDULE, RUN, OUTPUT = (
    "model",
    "data",
    "optimisation",
    "augmentation",
    "schedule and time budget",
    "run control",
    "output",
)
GROUPS = (MODEL, DATA, OPTIM, AUGMENT, SCHEDULE, RUN, OUTPUT)  # `train --help` in this order


def _setting(default: Any, group: str, help: str, metavar: str | None = None) -> Any:
    """A config field with its flag's help text, group and metavar beside it."""
    return field(default=default, metadata={"group": group, "help": help, "metavar": metavar})


@dataclass
class TrainConfig:
    """Every setting of a run; each field is one ``train`` flag (``--image-size`` for
    ``image_size``), and its help text lives here."""

    preset: str = field(default="quick", metadata={"help": "named defaults"})
    arch: str = _setting(
        "alexnet",
        MODEL,
        "the seed network, the paper/d2l widths 96-256-384-384-256, or those widths with "
        "d2l's dropout placement (after each hidden ReLU)",
    )
    dropout: float = _setting(0.5, MODEL, "dropout probability in the classifier")
    init: str = _setting("default", MODEL, "weight initialisation (xavier: Glorot, as d2l)")
    epochs: int = _setting(
        10,
        SCHEDULE,
        "epochs in all (with --resume: the total to reach; with --time-budget: the most)",
        "N",
    )
    time_budget: float = _setting(
        0.0,
        SCHEDULE,
        "size a new run to this wall time (90s, 15m, 1h): its speed is measured first and "
        "it trains as many epochs as fit, at most --epochs (0: off; seconds)",
        "DURATION",
    )
    budget_sizes: str = _setting(
        "",
        SCHEDULE,
        "with --time-budget: train at the largest of these resolutions (px, comma-separated) "
        "at which --budget-epochs fit, else the smallest; a given --image-size turns it off",
        "PX,PX",
    )
    budget_epochs: int = _setting(
        1, SCHEDULE, "the epochs a size of --budget-sizes must fit to be chosen", "N"
    )
    batch_size: int = _setting(128, DATA, "global batch size, split across processes", "N")
    drop_last: bool = _setting(
        True,
        DATA,
        "drop each epoch's incomplete last batch (--no-drop-last keeps it, as a DataLoader "
        "does by default; one process only)",
    )
    eval_batch_size: int = _setting(500, DATA, "batch size of validation and test", "N")
    optimizer: str = _setting("sgd", OPTIM, "optimizer")
    lr: float = _setting(0.01, OPTIM, "peak learning rate")
    momentum: float = _setting(0.9, OPTIM, "SGD momentum")
    nesterov: bool = _setting(False, OPTIM, "Nesterov momentum (SGD)")
    weight_decay: float = _setting(0.0, OPTIM, "weight decay (not on biases)")
    schedule: str = _setting(
        "constant",
        SCHEDULE,
        "learning-rate schedule (wsd: warm-up, the peak held, then a cosine decay over the "
        "last --cooldown of the run, which lets --time-budget plan again until then)",
    )
    warmup_epochs: float = _setting(
        0.0, SCHEDULE, "warm-up epochs (onecycle: 0 means 30%% of the run)", "E"
    )
    cooldown: float = _setting(
        0.3, SCHEDULE, "wsd: the share of the run's last steps that decay to 0", "F"
    )
    label_smoothing: float = _setting(0.0, OPTIM, "label smoothing of the cross-entropy", "F")
    grad_clip: float = _setting(0.0, OPTIM, "max gradient norm (0: off)", "NORM")
    ema: float = _setting(
        0.0,
        OPTIM,
        "evaluate and save a moving average of the weights with this decay (0: off)",
        "DECAY",
    )
    image_size: int = _setting(
        224,
        MODEL,
        "input resolution in px (>= 63; >= 65 for alexnet-paper and alexnet-d2l)",
        "PX",
    )
    start_size: int = _setting(
        0, SCHEDULE, "progressive resizing: the early resolution (0: off)", "PX"
    )
    start_epochs: int = _setting(0, SCHEDULE, "train the first N epochs at --start-size", "N")
    resize_mode: str = _setting(
        "bilinear", MODEL, "how the 28x28 images are resized to --image-size"
    )
    mean: float = _setting(
        MEAN, MODEL, "inputs are (x/255 - MEAN) / STD; --mean 0 --std 1 leaves them in [0, 1]"
    )
    std: float = _setting(STD, MODEL, "see --mean")
    flip: bool = _setting(False, AUGMENT, "random horizontal flips")
    translate: int = _setting(
        0, AUGMENT, "random shift up to N pixels of the 28x28 image (0: off)", "N"
    )
    erase: float = _setting(
        0.0,
        AUGMENT,
        "random erasing: with probability P a box (2-33%% of the image) becomes noise",
        "P",
    )
    zoom: float = _setting(
        0.0, AUGMENT, "random zoom in or out by up to this fraction (0.1: 0.9x to 1.1x)", "F"
    )
    rotate: float = _setting(
        0.0, AUGMENT, "random rotation by up to this many degrees either way (0: off)", "DEG"
    )
    precision: str = _setting(
        "auto", RUN, "auto: bf16 autocast where the device has native bf16, else fp32"
    )
    channels_last: bool = _setting(True, RUN, "channels_last memory format")
    compile: bool = _setting(False, RUN, "torch.compile the model")
    device: str = _setting("auto", RUN, "training device (auto: cuda when available)")
    seed: int = _setting(
        0, RUN, "seed of the initial weights, data order, augmentation and dropout", "N"
    )
    val_size: int = _setting(5000, DATA, "training images held out for model selection", "N")
    split_seed: int = _setting(0, DATA, "seed that picks the held-out images", "N")
    limit_train: int = _setting(0, DATA, "train on the first N images only (0: all)", "N")
    limit_eval: int = _setting(
        0, DATA, "validate and test on the first N images only (0: all)", "N"
    )
    data_dir: str | None = _setting(
        None,
        DATA,
        f"folder with the four IDX files, .gz or raw (default: ${ENV_VAR}, else "
        f"{DEBIAN_DIR}, else ./{TORCHVISION_ROOT / 'FashionMNIST' / 'raw'})",
        "DIR",
    )
    out: str | None = _setting(
        None, OUTPUT, "run folder (default: runs/<timestamp>-<preset>)", "DIR"
    )
    progress: bool = _setting(True, OUTPUT, "progress bar on a terminal")
    log_every: int = _setting(
        10,
        OUTPUT,
        "steps between progress updates, TensorBoard points and the finite-loss check",
        "N",
    )
    tensorboard: bool = _setting(
        True, OUTPUT, "TensorBoard event files in OUT/tensorboard (needs the tensorboard extra)"
    )
    early_stop: int = _setting(
        0,
        SCHEDULE,
        "stop after N epochs in a row without a validation-accuracy gain (0: off)",
        "N",
    )
    min_delta: float = _setting(
        0.0, SCHEDULE, "the validation-accuracy gain that counts for --early-stop", "D"
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


_NO_AUGMENT = {"flip": False, "translate": 0, "erase": 0.0, "zoom": 0.0, "rotate": 0.0}

# quick's recipe, which hour builds on: one-cycle AdamW with label smoothing and flips.
_QUICK = dict(
    epochs=5,
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.01,
    batch_size=128,
    schedule="onecycle",
    warmup_epochs=0.3,
    label_smoothing=0.1,
    image_size=128,
    flip=True,
    translate=0,
    precision="auto",
)

PRESETS: dict[str, dict[str, Any]] = {
    # The seed notebook with its bugs fixed (10 outputs, real cross-entropy).
    "seed": dict(
        epochs=3,
        optimizer="sgd",
        lr=0.001,
        momentum=0.5,
        nesterov=False,
        batch_size=64,
        image_size=224,
        schedule="constant",
        weight_decay=0.0,
        label_smoothing=0.0,
        **_NO_AUGMENT,
    ),
    # Dive into Deep Learning's AlexNet chapter as its train_ch6 runs it: its network (paper
    # widths, dropout after each hidden ReLU), Xavier init, plain SGD, Pillow's bilinear
    # resize of the uint8 image, unnormalised [0, 1] pixels (ToTensor only), all 60,000
    # training images (no validation split, so the last epoch is tested), float32.
    "d2l": dict(
        arch="alexnet-d2l",
        init="xavier",
        resize_mode="pil-bilinear",
        mean=0.0,
        std=1.0,
        val_size=0,
        drop_last=False,
        precision="fp32",
        epochs=10,
        optimizer="sgd",
        lr=0.01,
        momentum=0.0,
        nesterov=False,
        batch_size=128,
        image_size=224,
        schedule="constant",
        weight_decay=0.0,
        label_smoothing=0.0,
        **_NO_AUGMENT,
    ),
    # Fifteen minutes on any machine: the largest resolution at which 4 epochs fit, else
    # the smallest (65 px: the least every arch takes) with what fits there
    # (docs/results.md#quick).
    "quick": dict(_QUICK, time_budget=900.0, budget_sizes="65,96,128", budget_epochs=4),
    # An hour of wall clock on any machine: quick's recipe at 160 px, more regularised, at
    # half quick's peak rate, for as many epochs as fit (at most 40; docs/results.md#hour).
    "hour": dict(
        _QUICK,
        epochs=40,
        time_budget=3600.0,
        lr=5e-4,
        image_size=160,
        weight_decay=0.05,
        warmup_epochs=1,
        translate=2,
        erase=0.25,
    ),
    # Maximum accuracy on a GPU at the seed's 224 px; AdamW, since SGD stays on this
    # batch-norm-free network's initial plateau (docs/results.md#best).
    "best": dict(
        epochs=30,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        batch_size=256,
        schedule="onecycle",
        warmup_epochs=2,
        label_smoothing=0.1,
        image_size=224,
        flip=True,
        translate=2,
        grad_clip=5.0,
    ),
}


def setting_help(name: str) -> str:
    """The help text of the ``train`` flag for config field ``name``."""
    return str(TrainConfig.__dataclass_fields__[name].metadata["help"])


def epoch_size(config: TrainConfig, epoch: int) -> int:
    """The training resolution of ``epoch`` (0-based): progressive resizing's early size."""
    return config.start_size if epoch < config.start_epochs else config.image_size


def resolve(preset: str, overrides: dict[str, Any]) -> TrainConfig:
    """The preset's values over the defaults, then every explicitly given flag over those."""
    if preset not in PRESETS:
        raise FmnistError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = TrainConfig(preset=preset, **PRESETS[preset])
    given = {k for k, v in overrides.items() if v is not None}
    if {"image_size", "start_size", "start_epochs"} & given and "budget_sizes" not in given:
        config = dataclasses.replace(config, budget_sizes="")  # a given size is the size
    return replace(config, overrides)


def budget_sizes(config: TrainConfig) -> list[int]:
    """``--budget-sizes`` as resolutions, smallest first (empty when off)."""
    text = config.budget_sizes.replace(" ", "")
    if not text:
        return []
    try:
        sizes = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise FmnistError(
            f"--budget-sizes {config.budget_sizes!r}: expected resolutions in px separated by "
            "commas, such as 65,96,128"
        ) from None
    for size in sizes:
        check_image_size(config.arch, size, flag="--budget-sizes")
    return sizes


def replace(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    validate(config)
    return config


CHOICES = {
    "arch": ARCHS,
    "init": INITS,
    "optimizer": ("sgd", "adamw"),
    "schedule": ("constant", "cosine", "onecycle", "wsd"),
    "precision": PRECISIONS,
    "device": DEVICES,
    "resize_mode": RESIZE_MODES,
}
_POSITIVE = ("epochs", "budget_epochs", "batch_size", "eval_batch_size", "lr", "log_every")
_NON_NEGATIVE = (
    "weight_decay",
    "warmup_epochs",
    "grad_clip",
    "translate",
    "start_size",
    "start_epochs",
    "val_size",
    "limit_train",
    "limit_eval",
    "momentum",
    "seed",
    "split_seed",
    "early_stop",
    "min_delta",
    "time_budget",
)
_FLAG = {name: "--" + name.replace("_", "-") for name in TrainConfig.__dataclass_fields__}


def validate(config: TrainConfig) -> None:
    check_numbers(config)
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise FmnistError(f"{_FLAG[name]} {value!r}: choose one of {', '.join(choices)}")
    for name in _POSITIVE:
        if not getattr(config, name) > 0:
            raise FmnistError(f"{_FLAG[name]} must be > 0, got {getattr(config, name)}")
    for name in _NON_NEGATIVE:
        if not getattr(config, name) >= 0:
            raise FmnistError(f"{_FLAG[name]} must be >= 0, got {getattr(config, name)}")
    if not 0.0 <= config.dropout < 1.0:
        raise FmnistError(f"--dropout must be in [0, 1), got {config.dropout}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise FmnistError(f"--label-smoothing must be in [0, 1), got {config.label_smoothing}")
    if not 0.0 <= config.ema < 1.0:
        raise FmnistError(f"--ema must be a decay in [0, 1), e.g. 0.999; got {config.ema}")
    if not 0.0 <= config.erase <= 1.0:
        raise FmnistError(f"--erase must be a probability in [0, 1], got {config.erase}")
    if not 0.0 < config.cooldown <= 1.0:
        raise FmnistError(f"--cooldown must be a share in (0, 1], got {config.cooldown}")
    if not 0.0 <= config.zoom <= 0.5:
        raise FmnistError(f"--zoom must be a fraction in [0, 0.5], got {config.zoom}")
    if not 0.0 <= config.rotate <= 180.0:
        raise FmnistError(f"--rotate must be in [0, 180] degrees, got {config.rotate}")
    if config.translate > 14:
        raise FmnistError(f"--translate must be at most 14 pixels, got {config.translate}")
    if config.val_size >= 60000:
        raise FmnistError(
            f"--val-size must be below 60000 (the training set), got {config.val_size}"
        )
    if config.std <= 0:
        raise FmnistError(f"--std must be > 0, got {config.std}")
    check_image_size(config.arch, config.image_size)
    if budget_sizes(config) and config.start_epochs:
        raise FmnistError(
            "--budget-sizes chooses one resolution for the whole run: it cannot be combined "
            "with --start-epochs (give --budget-sizes '' to turn it off)"
        )
    if config.early_stop and not config.val_size:
        raise FmnistError("--early-stop watches validation accuracy: it needs --val-size > 0")
    if config.start_epochs:
        if config.start_epochs >= config.epochs:
            raise FmnistError(
                f"--start-epochs {config.start_epochs} must be below --epochs {config.epochs} "
                "(the last epochs train at --image-size)"
            )
        if not config.start_size:
            raise FmnistError("--start-epochs needs --start-size (the early resolution)")
        check_image_size(config.arch, config.start_size, flag="--start-size")


def check_numbers(config: TrainConfig) -> None:
    """Every float finite and every count below 2**31, wherever the value came from (a flag,
    a recipe file, a checkpoint's config)."""
    for setting in dataclasses.fields(config):
        value = getattr(config, setting.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise FmnistError(f"{_FLAG[setting.name]} must be a finite number, got {value}")
        if isinstance(value, int) and abs(value) > INT_MAX:
            raise FmnistError(f"{_FLAG[setting.name]} must be at most {INT_MAX}, got {value}")
