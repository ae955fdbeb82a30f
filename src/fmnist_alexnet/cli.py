"""Command-line interface: parse, call, report. No logic lives here."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import torch

from fmnist_alexnet import __version__
from fmnist_alexnet.argtypes import duration, integer, number
from fmnist_alexnet.config import (
    CHOICES,
    GROUPS,
    OUTPUT,
    PRESETS,
    RUN,
    TrainConfig,
    resolve,
    setting_help,
)
from fmnist_alexnet.data import sources
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.engines import ENGINES, load_classifier
from fmnist_alexnet.infer.evaluate import TTA_CHOICES
from fmnist_alexnet.infer.export import CHECK_IMAGES, FORMATS
from fmnist_alexnet.infer.ood import DEFAULT_METHOD, KEEP_REAL, OOD_METHODS
from fmnist_alexnet.infer.quantize import CALIBRATION_IMAGES, int8_line
from fmnist_alexnet.infer.quantize import METHODS as QUANTIZE_METHODS
from fmnist_alexnet.runtime import DEVICES, PRECISIONS

if TYPE_CHECKING:
    from fmnist_alexnet.bench.inference import InferenceBenchmark
    from fmnist_alexnet.bench.timing import Benchmark
    from fmnist_alexnet.infer.calibration import Calibrated
    from fmnist_alexnet.infer.predict import Prediction

PROG = "fmnist-alexnet"
CHECKPOINT_HELP = "a checkpoint (.pt) or a run folder (its checkpoints/best.pt)"
MODEL_HELP = "a checkpoint (.pt), a run folder (its checkpoints/best.pt) or an .onnx export"
ENGINE_HELP = (
    "auto (default): onnxruntime for an .onnx file, PyTorch otherwise; or name one of them"
)
PRECISION_HELP = "auto: as the checkpoint was trained, bf16 where native; fp32: exact float32"

# The config fields `bench` takes as flags, overriding its preset as `train`'s do.
BENCH_FLAGS = (
    "log_every",
    "arch",
    "image_size",
    "batch_size",
    "precision",
    "channels_last",
    "compile",
    "device",
    "data_dir",
)
_TYPES: dict[str, Callable[[str], Any]] = {
    "int": integer(),
    "float": number(),
    "str": str,
    "str | None": str,
}
_FIELD_TYPES = {"time_budget": duration}  # a flag whose text is not a plain number


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[_Parser]  # what each command's parser is added to
    Command = Callable[[argparse.Namespace], int]


def preset_defaults(name: str) -> str:
    """What each preset trains with when the flag is not given, as help text says it."""
    values = {preset: getattr(resolve(preset, {}), name) for preset in PRESETS}
    if len({repr(v) for v in values.values()}) == 1:
        return f"default {_shown(next(iter(values.values())))}"
    return "default by preset: " + ", ".join(f"{p} {_shown(v)}" for p, v in values.items())


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).replace("%", "%%")


def add_train_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    groups: dict[str, argparse._ArgumentGroup] | None = None,
) -> None:
    """One flag per TrainConfig field (or per one of ``names``), its help text, group and
    metavar from the field's metadata. Each defaults to None: only flags given override the
    preset (or, with --resume, the checkpoint's config). ``groups`` (name -> argument
    group) files each flag under its field's group; else all go on ``parser``."""
    for field in dataclasses.fields(TrainConfig):
        if field.name == "preset" or (names is not None and field.name not in names):
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata["help"]
        if field.name not in ("data_dir", "out"):
            help_text += f" ({preset_defaults(field.name)})"
        kwargs: dict[str, Any] = {"default": None, "help": help_text}
        if field.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field.name in CHOICES:
            kwargs["choices"] = CHOICES[field.name]
        else:
            kwargs["type"] = _FIELD_TYPES.get(field.name, _TYPES[str(field.type)])
            kwargs["metavar"] = field.metadata["metavar"]
        (groups or {}).get(field.metadata["group"], parser).add_argument(flag, **kwargs)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=list(PRESETS), help="named defaults (default: quick)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a recipe: a TOML file of settings (e.g. tune's best_recipe.toml) or a run's "
        "config.json (its rerun goes to a new folder); flags given here override it",
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    groups[RUN].add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue from a checkpoint (auto: OUT/checkpoints/last.pt); "
        "--epochs is then the total",
    )
    add_train_flags(p, groups=groups)
    groups[OUTPUT].add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="skip the plots and model card written when training ends",
    )


def _data_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR", help=setting_help("data_dir"))


def _device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto", help="default auto: cuda if any")


def _precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="AlexNet on Fashion-MNIST: train it, measure it, use it. "
        f"'{PROG} COMMAND --help' lists a command's flags.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_arguments, _ in _commands().values():
        add_arguments(commands)
    return parser


def version_line() -> str:
    return f"{PROG} {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _commands() -> dict[str, tuple[Callable[[Commands], None], Command]]:
    """Each subcommand: the function that adds its parser, the function that runs it."""
    return {
        "train": (_add_train, _train),
        "evaluate": (_add_evaluate, _evaluate),
        "data": (_add_data, _data),
        "report": (_add_report, _report),
        "predict": (_add_predict, _predict),
        "export": (_add_export, _export),
        "calibrate": (_add_calibrate, _calibrate),
        "bench": (_add_bench, _bench),
        "serve": (_add_serve, _serve),
        "tune": (_add_tune, _tune),
    }


def _add_train(commands: Commands) -> None:
    train = commands.add_parser(
        "train", help="train a model", description="Train AlexNet; presets: " + ", ".join(PRESETS)
    )
    _train_arguments(train)


def _add_evaluate(commands: Commands) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint")
    evaluate.add_argument("checkpoint", help=CHECKPOINT_HELP)
    evaluate.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="the official test set (default) or the run's held-out validation split",
    )
    _data_dir_flag(evaluate)
    _device_flag(evaluate)
    evaluate.add_argument("--batch-size", type=integer(1), default=500, help="default 500")
    _precision_flag(evaluate)
    evaluate.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default="none",
        help="test-time augmentation: flip averages each image's and its mirror's softmax "
        "(reported apart from the plain accuracy)",
    )
    evaluate.add_argument(
        "--limit-eval",
        type=integer(0),
        default=0,
        metavar="N",
        help="the first N images only (0: all)",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")


def _add_data(commands: Commands) -> None:
    data = commands.add_parser("data", help="find, verify or download the dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="which files are used; verify their SHA-256")
    _data_dir_flag(info)
    download = data_commands.add_parser("download", help="fetch the four files and verify them")
    download.add_argument(
        "--to", required=True, metavar="DIR", help="folder to write the four .gz files into"
    )
    download.add_argument("--mirror", help="base URL (default: the dataset's official mirror)")


def _add_report(commands: Commands) -> None:
    report = commands.add_parser("report", help="plots and a model card for a run folder")
    report.add_argument("run_dir", help="a training run's folder (runs/X)")
    _device_flag(report)
    _data_dir_flag(report)


def _add_predict(commands: Commands) -> None:
    predict = commands.add_parser("predict", help="classify your own image files")
    predict.add_argument("model", help=MODEL_HELP)
    predict.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--top-k", type=integer(1), default=3, help="default 3")
    predict.add_argument(
        "--invert",
        choices=["auto", "yes", "no"],
        default="auto",
        help="negate to light-on-black (auto: when the border is light)",
    )
    predict.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    _device_flag(predict)
    predict.add_argument("--batch-size", type=integer(1), default=64, help="default 64")
    _no_calibration_flag(predict)
    _precision_flag(predict)
    predict.add_argument(
        "--explain",
        metavar="DIR",
        help="write, per image, a PNG of the pixels that drove its top class (docs/explain.md)",
    )
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON array")
    output.add_argument("--csv", action="store_true", help="print CSV: path,rank,label,class,prob")


def _add_export(commands: Commands) -> None:
    export = commands.add_parser(
        "export", help="ONNX, torch.export (pt2), TorchScript or safetensors, checked"
    )
    export.add_argument("checkpoint", help=CHECKPOINT_HELP)
    export.add_argument("--format", choices=FORMATS, required=True, help="the file format")
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    export.add_argument(
        "--quantize",
        choices=["int8"],
        help="ONNX only: ONNX Runtime's int8 model, checked against float32 (docs/export.md)",
    )
    export.add_argument(
        "--quantize-method",
        choices=QUANTIZE_METHODS,
        default="static",
        help="static: every layer int8, calibrated (default); dynamic: linear layers' weights",
    )
    export.add_argument(
        "--calibration-images",
        type=integer(1),
        default=CALIBRATION_IMAGES,
        metavar="N",
        help=f"training images that calibrate static int8 ({CALIBRATION_IMAGES})",
    )
    export.add_argument(
        "--check-images",
        type=integer(1),
        default=CHECK_IMAGES,
        metavar="N",
        help=f"test images the export is checked on ({CHECK_IMAGES}; 10000 for all)",
    )
    _data_dir_flag(export)


def _add_calibrate(commands: Commands) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="fit a checkpoint's temperature and not-a-garment threshold on its validation split",
        description="Temperature scaling: the one T that makes softmax(logits / T) most likely "
        "on the run's held-out validation split; and the out-of-distribution score's threshold "
        f"that keeps {100 * KEEP_REAL:.0f} % of those images as garments. Both are written "
        "into the checkpoint (training does both at its end); predict, evaluate, serve and "
        "export then use them (docs/calibration.md, docs/ood.md).",
    )
    calibrate.add_argument("checkpoint", help=CHECKPOINT_HELP)
    _device_flag(calibrate)
    calibrate.add_argument("--batch-size", type=integer(1), default=500, help="default 500")
    calibrate.add_argument(
        "--ood-score",
        choices=OOD_METHODS,
        default=DEFAULT_METHOD,
        help=f"the out-of-distribution score to fit a threshold for (default {DEFAULT_METHOD})",
    )
    calibrate.add_argument("--json", action="store_true", help="print one JSON object")
    _data_dir_flag(calibrate)


def _no_calibration_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="the raw softmax, not the probabilities of the model's fitted temperature",
    )


def _add_bench(commands: Commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="training images/s: our pipeline, a bare step loop and the seed's way, side by side",
        description="Times the training step of a preset (quick unless --preset says), with "
        "the flags below overriding it as they do for train.",
    )
    bench.add_argument("--preset", choices=list(PRESETS), default="quick", help="default quick")
    add_train_flags(bench, BENCH_FLAGS)
    bench.add_argument("--steps", type=integer(1), default=5, help="steps per timing window (5)")
    bench.add_argument(
        "--windows", type=integer(1), default=3, help="timing windows, median taken (3)"
    )
    bench.add_argument("--warmup", type=integer(0), default=2, help="untimed steps first (2)")
    bench.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the seed-style DataLoader + PIL baseline",
    )
    bench.add_argument(
        "--baseline-workers",
        type=integer(0, 64),
        default=4,
        help="DataLoader workers of the baseline (4, as the seed used)",
    )
    bench.add_argument(
        "--tensorboard",
        action="store_true",
        help="also time the pipeline writing TensorBoard points every --log-every steps",
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="also break a step into data, forward, backward, optimizer, and on the CPU "
        "into convolutions, linear layers and optimizer with their GFLOP/s",
    )
    bench.add_argument(
        "--inference",
        nargs="+",
        metavar="MODEL",
        help="time answering instead of training: batch-1 latency and batch 32/64 img/s of "
        "each checkpoint, run folder or .onnx, side by side (docs/benchmarks.md)",
    )
    bench.add_argument(
        "--threads", type=integer(1, 256), help="--inference: intra-op threads (every core)"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")


def _add_serve(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="HTTP API and a web page for a trained model",
        description="Serve MODEL (a checkpoint, a run folder or an exported .onnx) over HTTP: "
        "POST /v1/predict, a page at /, API docs at /docs. Ctrl-C or SIGTERM stops it after "
        "answering every accepted request.",
    )
    serve.add_argument("model", help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine)")
    serve.add_argument("--port", type=integer(0, 65535), default=8000, help="default 8000")
    serve.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    _device_flag(serve)
    _precision_flag(serve)
    serve.add_argument(
        "--max-batch", type=integer(1), default=64, help="images per forward pass (64)"
    )
    serve.add_argument(
        "--max-wait-ms",
        type=number(least=0),
        default=5.0,
        help="wait for more requests to batch (5)",
    )
    serve.add_argument(
        "--max-upload-mb", type=number(above=0), default=10.0, help="largest request body (10)"
    )
    serve.add_argument("--max-files", type=integer(1), default=64, help="files per request (64)")
    serve.add_argument("--data-dir", help="the dataset, for the page's test images")
    serve.add_argument(
        "--threads",
        type=integer(1, 256),
        help="intra-op threads of the forward pass (default: the engine's own, every core)",
    )
    _no_calibration_flag(serve)


def _add_tune(commands: Commands) -> None:
    tune = commands.add_parser(
        "tune",
        help="search hyperparameters with Optuna; each trial is an ordinary run",
        description="Optuna's TPE sampler and median pruner over training runs, selected on "
        "validation accuracy; the best trial is tested once at the end. The study lives in "
        "OUT/study.db (or --storage): the same command again adds trials; several processes "
        "or machines given one --storage and --study work on one study "
        "(docs/distributed.md). Train flags given here are fixed for every trial (and taken "
        "out of the search space).",
    )
    tune.add_argument("--preset", choices=list(PRESETS), default="quick", help="default quick")
    tune.add_argument("--out", metavar="DIR", help="tune folder (default: tunes/STUDY)")
    _study_flags(tune)
    tune.add_argument(
        "--space",
        metavar="FILE",
        help="TOML search space replacing the default one (lr, weight_decay, label_smoothing, "
        "dropout, image_size 64/96/128, batch_size 64/128/256)",
    )
    tune.add_argument(
        "--startup-trials", type=integer(0), default=5, help="random trials first (5)"
    )
    tune.add_argument(
        "--prune-startup", type=integer(0), default=3, help="completed trials before pruning (3)"
    )
    tune.add_argument(
        "--prune-warmup", type=integer(0), default=1, help="epochs before a trial can be pruned (1)"
    )
    tune.add_argument(
        "--sampler-seed", type=integer(0, 2**32 - 1), help="seed of the sampler (reproducible)"
    )
    trial_flags = [f.name for f in dataclasses.fields(TrainConfig)]
    add_train_flags(tune, [name for name in trial_flags if name not in ("out", "time_budget")])


def _study_flags(tune: argparse.ArgumentParser) -> None:
    """How many trials, for how long, and where the study lives."""
    count = tune.add_mutually_exclusive_group()
    count.add_argument(
        "--trials", type=integer(1), default=20, help="trials this process adds (20)"
    )
    count.add_argument(
        "--study-trials",
        type=integer(1),
        metavar="N",
        help="run trials until the study has N, whichever worker runs them (for several "
        "workers on one --storage)",
    )
    tune.add_argument(
        "--timeout", type=number(above=0), metavar="S", help="start no trial after S s"
    )
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="a database URL (default sqlite:///OUT/study.db; postgresql://... needs the "
        "tune-db extra) or journal:PATH, a journal file on a shared file system",
    )
    tune.add_argument(
        "--heartbeat",
        type=integer(1),
        default=10,
        metavar="S",
        help="a database study fails and reruns a trial silent for 3x S seconds (10)",
    )
    tune.add_argument("--study", default="fmnist-alexnet", help="study name (fmnist-alexnet)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _commands()[args.command][1](args)
    except FmnistError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fmnist-alexnet ... | head` closed our stdout: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what the shell reports for a tool ended by SIGPIPE


def _given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags the user gave, by config field name."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _train(args: argparse.Namespace) -> int:
    from fmnist_alexnet.recipe import read_recipe
    from fmnist_alexnet.runtime import init_distributed, shutdown_distributed
    from fmnist_alexnet.train import TrainingDiverged, TrainingInterrupted, train
    from fmnist_alexnet.train.messages import summary_line
    from fmnist_alexnet.train.start import RunComplete, plan_run

    overrides = _given(args, [f.name for f in dataclasses.fields(TrainConfig)])
    recipe = read_recipe(args.config) if args.config else None
    try:
        config, resume = plan_run(args.preset, overrides, args.resume, recipe)
    except RunComplete as done:
        print(done, flush=True)
        return 0
    if args.resume == "auto" and resume is None:
        print(f"no checkpoint in {config.out} yet: starting a new run there", flush=True)
    dist = init_distributed(config.device)
    try:
        result = train(config, resume, dist)
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 3
    finally:
        shutdown_distributed()
    if dist.is_main:
        print(summary_line(result), flush=True)
        if args.report:
            _report_after_training(result.out, config)
    return 0


def _report_after_training(run_dir: Path, config: TrainConfig) -> None:
    try:
        from fmnist_alexnet.report import write_report

        write_report(run_dir, device=config.device, data_dir=config.data_dir)
    except ImportError as exc:
        print(
            f"no report: {exc.name} is not installed (pip install 'fmnist-alexnet[report]'), "
            f"then: fmnist-alexnet report {run_dir}"
        )
    else:
        print(f"report: {run_dir}/report.md")


def _evaluate(args: argparse.Namespace) -> int:
    from fmnist_alexnet.infer.evaluate import evaluate_checkpoint
    from fmnist_alexnet.train.messages import unpublished_data_line

    result = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        data_dir=args.data_dir,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        tta=args.tta,
        limit=args.limit_eval,
    )
    if not result.data_published:
        print(unpublished_data_line(result.data_directory), file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    tta = "" if result.tta == "none" else f" with {result.tta} test-time augmentation"
    print(
        f"{result.split} accuracy{tta} {result.accuracy:.4f} on {result.n} images "
        f"(loss {result.loss:.4f})"
    )
    if (c := result.calibration) is not None:
        print(
            f"calibration at temperature {c.temperature:.4f}: ECE {c.ece:.4f} "
            f"({c.ece_uncalibrated:.4f} at 1), NLL {c.nll:.4f} ({c.nll_uncalibrated:.4f} at 1)"
        )
    names = list(result.per_class)
    width = max(len(name) for name in names)
    for name, accuracy in result.per_class.items():
        print(f"  {name:<{width}}  {accuracy:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for name, row in zip(names, result.confusion_matrix, strict=True):
        print(f"  {name:<{width}}  " + " ".join(f"{count:5d}" for count in row))
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "download":
        mirror = args.mirror or sources.OFFICIAL_MIRROR
        for name, what in sources.download(args.to, mirror):
            print(f"{name}: {what}, SHA-256 verified")
        print(f"ready: pass --data-dir {args.to} or set {sources.ENV_VAR}={args.to}")
        return 0
    source = sources.find_data(args.data_dir)
    print(f"source: {source.origin} ({source.directory})")
    checks = sources.verify(source)
    for name, path in source.files.items():
        print(f"  {name:<24} {'sha256 ok' if checks[name] else 'SHA-256 MISMATCH'}  {path}")
    if not all(checks.values()):
        bad = ", ".join(name for name, ok in checks.items() if not ok)
        raise FmnistError(f"checksum mismatch for {bad}: these are not the published files")
    splits = sources.load_splits(source)
    print(f"train: {len(splits['train'][1])} images, test: {len(splits['test'][1])} images")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.inference:
        return _bench_inference(args)
    from fmnist_alexnet.bench.timing import bench

    overrides = _given(args, BENCH_FLAGS)
    result = bench(
        resolve(args.preset, {**overrides, "progress": False}),
        steps=args.steps,
        windows=args.windows,
        warmup=args.warmup,
        baseline=args.baseline,
        baseline_workers=args.baseline_workers,
        profile=args.profile,
        tensorboard=args.tensorboard,
    )
    return _print_result(result, args.json, _bench_lines)


def _bench_inference(args: argparse.Namespace) -> int:
    from fmnist_alexnet.bench.inference import bench_inference

    result = bench_inference(
        args.inference, threads=args.threads, windows=args.windows, data_dir=args.data_dir
    )
    return _print_result(result, args.json, _inference_lines)


def _print_result(result: Any, as_json: bool, lines: Callable[[Any], list[str]]) -> int:
    """A typed result as one JSON object (``--json``) or as its lines."""
    print(json.dumps(result.to_dict()) if as_json else "\n".join(lines(result)))
    return 0


def _inference_lines(r: InferenceBenchmark) -> list[str]:
    sizes = list(r.models[0].images_per_sec)
    lines = [
        f"{r.device_name}: {r.threads} intra-op thread{'s' * (r.threads != 1)}, torch {r.torch}, "
        f"{r.windows} window{'s' * (r.windows != 1)} alternating between the models after a "
        f"warm-up; batch-1 p50/p99 over {r.latency_calls} calls each",
        f"  {'engine':6} {'precision':9} {'MiB':>7} {'p50 ms':>7} {'p99 ms':>7} "
        + " ".join(f"{'img/s@' + str(size):>10}" for size in sizes)
        + "  model",
    ]
    first = r.models[0]
    for m in r.models:
        rates = " ".join(f"{m.images_per_sec[size]:10.0f}" for size in sizes)
        lines.append(
            f"  {m.engine:6} {m.precision:9} {m.model_bytes / 2**20:7.1f} {m.p50_ms:7.2f} "
            f"{m.p99_ms:7.2f} {rates}  {m.model}"
        )
    for m in r.models[1:]:
        ratios = ", ".join(
            f"{m.images_per_sec[size] / first.images_per_sec[size]:.2f}x img/s@{size}"
            for size in sizes
        )
        lines.append(
            f"  {m.model} against {first.model}: {m.p50_ms / first.p50_ms:.2f}x the p50 "
            f"latency, {ratios}, {first.model_bytes / m.model_bytes:.2f}x smaller"
        )
    return lines


def _bench_lines(r: Benchmark) -> list[str]:
    steps = f"{r.steps_per_window} step{'s' * (r.steps_per_window != 1)}"
    windows = (
        f"one window of {steps}" if r.windows == 1 else f"median of {r.windows} windows of {steps}"
    )
    lines = [
        f"{r.device_name}: {r.arch}, {r.preset} preset's step ({r.optimizer}), {r.precision}, "
        f"{r.image_size} px, batch {r.batch_size}, torch {r.torch}, {windows}",
        f"  train, our pipeline     {r.train_images_per_sec:9.1f} img/s",
        f"  train, bare step loop   {r.bare_train_images_per_sec:9.1f} img/s  "
        f"(pipeline cost {100 * r.pipeline_cost:.1f} %)",
    ]
    if r.tensorboard_train_images_per_sec is not None:
        lines.append(
            f"  train, with TensorBoard {r.tensorboard_train_images_per_sec:9.1f} img/s  "
            f"({r.tensorboard_ratio:.3f}x the pipeline's; a point every {r.log_every} steps)"
        )
    if r.baseline_train_images_per_sec is not None:
        lines.append(
            f"  train, seed-style       {r.baseline_train_images_per_sec:9.1f} img/s  "
            f"(ours is {r.speedup_vs_baseline:.2f}x)"
        )
    lines.append(f"  evaluation              {r.eval_images_per_sec:9.1f} img/s")
    lines.append(f"  peak memory             {r.peak_memory_mb:9.0f} MB")
    for phase, ms in (r.profile_ms_per_step or {}).items():
        lines.append(f"  {phase:<22}  {ms:9.1f} ms/step")
    if r.profile_parts is not None:
        lines.append(
            f"  by kind of work (profiled; a {r.gemm_size} GEMM runs at "
            f"{r.gemm_gflops:.0f} GFLOP/s here):"
        )
        for row in r.profile_parts:
            rate = f"{row['gflops']:7.0f} GFLOP/s" if row["gflops"] else ""
            lines.append(
                f"    {row['part']:<36} {row['ms_per_step']:8.1f} ms/step "
                f"{row['share']:6.1%}  {rate}".rstrip()
            )
    return lines


def _report(args: argparse.Namespace) -> int:
    from fmnist_alexnet.report import write_report

    for path in write_report(args.run_dir, device=args.device, data_dir=args.data_dir):
        print(f"wrote {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from fmnist_alexnet.infer.predict import predict_images

    model, _ = load_classifier(args.model, args.engine, args.device, args.precision)
    results = predict_images(
        model,
        args.paths,
        top_k=args.top_k,
        invert=args.invert,
        batch_size=args.batch_size,
        calibrated=not args.no_calibration,
        explain=args.explain,
    )
    if not results:
        raise FmnistError("no image files found in " + " ".join(args.paths))
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=1))
    elif args.csv:
        _write_csv(results, sys.stdout)
    else:
        for result in results:
            if result.error is not None:
                print(f"{result.path}: error: {result.error}", file=sys.stderr)
                continue
            tops = ", ".join(f"{score.class_name} {score.prob:.3f}" for score in result.top)
            if result.answer is not None and result.answer.ood:
                tops = f"does not look like a clothing item (nearest: {tops})"
            print(f"{result.path}: {tops}")
    return 1 if any(result.error is not None for result in results) else 0


def _write_csv(results: list[Prediction], stream: TextIO) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    # ood last: the columns scripts already read keep their places
    writer.writerow(["path", "rank", "label", "class", "prob", "error", "ood"])
    for result in results:
        if result.answer is not None:
            ood = "" if result.answer.ood is None else str(result.answer.ood).lower()
            for rank, score in enumerate(result.top, 1):
                prob = f"{score.prob:.6f}"
                writer.writerow([result.path, rank, score.label, score.class_name, prob, "", ood])
        if result.error is not None:
            writer.writerow([result.path, "", "", "", "", result.error, ""])


def _export(args: argparse.Namespace) -> int:
    from fmnist_alexnet.infer.export import export

    result = export(
        args.checkpoint,
        fmt=args.format,
        out=args.out,
        data_dir=args.data_dir,
        check_images=args.check_images,
        quantize=args.quantize,
        method=args.quantize_method,
        calibration_images=args.calibration_images,
    )
    kind = result["format"] + (" int8" if args.quantize else "")
    print(
        f"wrote {result['path']} ({result['bytes'] / 2**20:.1f} MiB, {kind}); "
        f"input {result['input']}"
    )
    print(
        f"checked on {result['images']} real test images against PyTorch: largest logit "
        f"difference {result['max_abs_logit_diff']:.3g}, top-1 agreement "
        f"{100 * result['top1_agreement']:.2f} %"
    )
    if args.quantize:
        print(int8_line(result["contract"]["quantization"]))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from fmnist_alexnet.infer.calibration import calibrate_checkpoint

    result = calibrate_checkpoint(
        args.checkpoint,
        data_dir=args.data_dir,
        device=args.device,
        batch_size=args.batch_size,
        ood_method=args.ood_score,
    )
    return _print_result(result, args.json, _calibrated_lines)


def _calibrated_lines(result: Calibrated) -> list[str]:
    f = result.figures
    return [
        f"temperature {f.temperature:.4f} fitted on {result.images} validation images and "
        f"written to {result.path}",
        f"on them: ECE {f.ece_uncalibrated:.4f} -> {f.ece:.4f}, "
        f"NLL {f.nll_uncalibrated:.4f} -> {f.nll:.4f}",
        f"not-a-garment threshold: {result.ood_method} score above {result.ood_threshold:.4f} "
        f"(keeps {100 * KEEP_REAL:.0f} % of the validation images)",
    ]


def _serve(args: argparse.Namespace) -> int:
    try:
        from fmnist_alexnet.serve.app import ServeSettings
        from fmnist_alexnet.serve.server import serve
    except ImportError as exc:
        raise FmnistError(
            f"{exc.name} is not installed: pip install 'fmnist-alexnet[serve]'"
        ) from None
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        max_files=args.max_files,
        calibrated=not args.no_calibration,
    )
    serve(
        args.model,
        host=args.host,
        port=args.port,
        engine=args.engine,
        device=args.device,
        precision=args.precision,
        settings=settings,
        data_dir=args.data_dir,
        log=lambda line: print(line, flush=True),
        threads=args.threads,
    )
    return 0


def _tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fmnist_alexnet.tune.space import DEFAULT_SPACE, read_space
    from fmnist_alexnet.tune.study import TuneSettings, tune

    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("out", "preset")]
    fixed = _given(args, names)
    settings = TuneSettings(
        out=Path(args.out or Path("tunes") / args.study),
        trials=args.trials,
        study_trials=args.study_trials,
        heartbeat=args.heartbeat,
        timeout=args.timeout,
        storage=args.storage,
        study=args.study,
        space=read_space(args.space) if args.space else dict(DEFAULT_SPACE),
        startup_trials=args.startup_trials,
        prune_startup=args.prune_startup,
        prune_warmup=args.prune_warmup,
        sampler_seed=args.sampler_seed,
    )
    summary = tune(args.preset, fixed, settings, log=lambda line: print(line, flush=True))
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)
    print(f"study {summary['study']}: {counts}; report: {settings.out / 'tune_report.md'}")
    best = summary["best"]
    if best is None:
        print("no trial completed: nothing to recommend")
        return 1
    print(
        f"best: trial {best['trial']}, val acc {best['val_acc']:.4f}, test acc "
        f"{best['test_acc']:.4f} (tested once); recipe {settings.out / 'best_recipe.toml'}"
    )
    print(f"  {best['command']}")
    return 0
