"""Command-line interface: parse, call, report. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys

from fmnist_alexnet.config import PRESETS, TrainConfig
from fmnist_alexnet.data import CLASS_NAMES
from fmnist_alexnet.errors import FmnistError

PROG = "fmnist-alexnet"
PRECISION_HELP = "auto: as the checkpoint was trained, bf16 where native; fp32: exact float32"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        print(f"{PROG}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    # Every run flag defaults to None: only flags the user gives override the preset.
    p.add_argument("--preset", choices=list(PRESETS), help="named defaults (default: quick)")
    p.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue from a checkpoint (auto: OUT/checkpoints/last.pt); "
        "--epochs is then the total",
    )
    add = p.add_argument
    add("--arch", choices=["alexnet", "alexnet-paper"])
    add("--dropout", type=float, help="dropout in the classifier (the seed's 0.5)")
    add(
        "--init",
        choices=["default", "xavier"],
        help="weight initialisation (xavier: Glorot uniform, as d2l trains; d2l preset's default)",
    )
    add("--epochs", type=int)
    add("--batch-size", type=int, help="global batch size (split across processes)")
    add("--eval-batch-size", type=int)
    add("--optimizer", choices=["sgd", "adamw"])
    add("--lr", type=float, help="peak learning rate")
    add("--momentum", type=float)
    add("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    add("--weight-decay", type=float)
    add("--schedule", choices=["constant", "cosine", "onecycle"])
    add("--warmup-epochs", type=float)
    add("--label-smoothing", type=float)
    add("--grad-clip", type=float, help="max gradient norm (0: off)")
    add(
        "--ema",
        type=float,
        metavar="DECAY",
        help="evaluate and save an exponential moving average of the weights (0: off)",
    )
    add("--image-size", type=int, help="input resolution in px (>= 63; default 224)")
    add("--resize-mode", choices=["bilinear", "bicubic", "nearest"])
    add("--start-size", type=int, metavar="PX", help="progressive resizing: early resolution")
    add("--start-epochs", type=int, metavar="N", help="train the first N epochs at --start-size")
    add(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips",
    )
    add("--translate", type=int, help="random shift up to N pixels of the 28x28 image (0: off)")
    add(
        "--erase",
        type=float,
        metavar="P",
        help="random erasing: with probability P a box (2-33%% of the image) becomes noise",
    )
    add("--precision", choices=["auto", "bf16", "fp32"])
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    add(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model",
    )
    add("--device", choices=["auto", "cpu", "cuda"])
    add("--seed", type=int)
    add("--val-size", type=int, help="training images held out for model selection (5000)")
    add("--split-seed", type=int)
    add("--limit-train", type=int, metavar="N", help="train on the first N images only")
    add("--limit-eval", type=int, metavar="N", help="validate and test on N images only")
    add("--data-dir", help="folder with the four IDX files (.gz or raw)")
    add("--out", help="run folder (default runs/<timestamp>-<preset>)")
    add(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bar"
    )
    p.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="skip the plots and model card written when training ends",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="AlexNet on Fashion-MNIST: train, evaluate, data.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model", description="Train AlexNet; presets: " + ", ".join(PRESETS)
    )
    _train_arguments(train)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--split", choices=["test", "val"], default="test")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    evaluate.add_argument("--batch-size", type=int, default=500)
    evaluate.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help=PRECISION_HELP
    )
    evaluate.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="test-time augmentation: flip averages each image's and its mirror's softmax "
        "(reported apart from the plain accuracy)",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    data = commands.add_parser("data", help="find, verify or download the dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="which files are used; verify their SHA-256")
    info.add_argument("--data-dir")
    download = data_commands.add_parser("download", help="fetch the four files and verify them")
    download.add_argument("--to", required=True, metavar="DIR")
    download.add_argument("--mirror", help="base URL (default: the dataset's official mirror)")
    report = commands.add_parser("report", help="plots and a model card for a run folder")
    report.add_argument("run_dir")
    report.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    report.add_argument("--data-dir")

    predict = commands.add_parser("predict", help="classify your own image files")
    predict.add_argument("model", help="a checkpoint (.pt), or an .onnx file with --engine onnx")
    predict.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument(
        "--invert",
        choices=["auto", "yes", "no"],
        default="auto",
        help="negate to light-on-black (auto: when the border is light)",
    )
    predict.add_argument("--engine", choices=["torch", "onnx"], default="torch")
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help=PRECISION_HELP
    )
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON array")
    output.add_argument("--csv", action="store_true", help="print CSV: path,rank,label,class,prob")

    export = commands.add_parser("export", help="ONNX, TorchScript or safetensors, checked")
    export.add_argument("checkpoint")
    export.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--data-dir")

    bench = commands.add_parser(
        "bench",
        help="training images/s: our pipeline, a bare step loop and the seed's way, side by side",
    )
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    bench.add_argument("--arch", choices=["alexnet", "alexnet-paper"], default="alexnet")
    bench.add_argument("--image-size", type=int, default=224)
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    bench.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    bench.add_argument("--compile", action="store_true", help="torch.compile our model")
    bench.add_argument("--steps", type=int, default=5, help="steps per timing window")
    bench.add_argument("--windows", type=int, default=3, help="timing windows (median taken)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    bench.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the seed-style DataLoader + PIL baseline",
    )
    bench.add_argument(
        "--baseline-workers",
        type=int,
        default=4,
        help="DataLoader workers of the baseline (the seed used 4)",
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="also break a step into data, forward, backward, optimizer",
    )
    bench.add_argument("--data-dir")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _commands() -> dict:
    return {
        "train": _train,
        "evaluate": _evaluate,
        "bench": _bench,
        "report": _report,
        "predict": _predict,
        "export": _export,
        "data": _data,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _commands()[args.command](args)
    except FmnistError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _train(args) -> int:
    from fmnist_alexnet.runtime import init_distributed, shutdown_distributed
    from fmnist_alexnet.train import TrainingInterrupted, plan_run, summary_line, train

    overrides = {
        name: getattr(args, name)
        for name in TrainConfig.__dataclass_fields__
        if name != "preset" and getattr(args, name, None) is not None
    }
    config, resume_state = plan_run(args.preset, overrides, args.resume)
    dist = init_distributed(config.device)
    try:
        result = train(config, resume_state, dist)
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()
    if dist.is_main:
        print(summary_line(result), flush=True)
        if args.report:
            _report_after_training(result.out, config)
    return 0


def _report_after_training(run_dir, config) -> None:
    try:
        from fmnist_alexnet.report import write_report

        write_report(run_dir, config.device, config.data_dir)
    except ImportError as exc:
        print(
            f"no report: {exc.name} is not installed (pip install 'fmnist-alexnet[report]'), "
            f"then: fmnist-alexnet report {run_dir}"
        )
    else:
        print(f"report: {run_dir}/report.md")


def _evaluate(args) -> int:
    from fmnist_alexnet.evaluate import evaluate_checkpoint

    if args.batch_size <= 0:
        raise FmnistError(f"--batch-size must be > 0, got {args.batch_size}")
    result = evaluate_checkpoint(
        args.checkpoint,
        args.split,
        args.data_dir,
        args.device,
        args.batch_size,
        args.precision,
        args.tta,
    )
    if args.json:
        keys = ("split", "tta", "n", "accuracy", "loss", "per_class", "confusion_matrix")
        print(json.dumps({key: result[key] for key in keys}))
        return 0
    tta = "" if result["tta"] == "none" else f" with {result['tta']} test-time augmentation"
    print(
        f"{result['split']} accuracy{tta} {result['accuracy']:.4f} on {result['n']} images "
        f"(loss {result['loss']:.4f})"
    )
    width = max(len(name) for name in CLASS_NAMES)
    for name, accuracy in result["per_class"].items():
        print(f"  {name:<{width}}  {accuracy:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for name, row in zip(CLASS_NAMES, result["confusion_matrix"], strict=True):
        print(f"  {name:<{width}}  " + " ".join(f"{count:5d}" for count in row))
    return 0


def _data(args) -> int:
    from fmnist_alexnet.data import sources

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


def _bench(args) -> int:
    from fmnist_alexnet.bench import bench

    result = bench(
        args.device,
        args.image_size,
        args.batch_size,
        args.precision,
        args.channels_last,
        args.compile,
        args.steps,
        args.windows,
        args.warmup,
        args.data_dir,
        args.arch,
        args.baseline,
        args.baseline_workers,
        args.profile,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['device_name']}: {result['arch']}, {result['precision']}, "
        f"{result['image_size']} px, batch {result['batch_size']}, torch {result['torch']}, "
        f"median of {result['windows']} windows of {result['steps_per_window']} steps"
    )
    print(f"  train, our pipeline     {result['train_images_per_sec']:9.1f} img/s")
    print(
        f"  train, bare step loop   {result['bare_train_images_per_sec']:9.1f} img/s  "
        f"(pipeline cost {100 * result['pipeline_cost']:.1f} %)"
    )
    if result["baseline_train_images_per_sec"] is not None:
        print(
            f"  train, seed-style       {result['baseline_train_images_per_sec']:9.1f} img/s  "
            f"(ours is {result['speedup_vs_baseline']:.2f}x)"
        )
    print(f"  evaluation              {result['eval_images_per_sec']:9.1f} img/s")
    print(f"  peak memory             {result['peak_memory_mb']:9.0f} MB")
    for phase, ms in result.get("profile_ms_per_step", {}).items():
        print(f"  {phase:<22}  {ms:9.1f} ms/step")
    return 0


def _report(args) -> int:
    from fmnist_alexnet.report import write_report

    for path in write_report(args.run_dir, args.device, args.data_dir):
        print(f"wrote {path}")
    return 0


def _predict(args) -> int:
    from fmnist_alexnet import predict

    if args.engine == "onnx":
        from fmnist_alexnet.export import onnx_logits_fn

        logits_fn = onnx_logits_fn(args.model)
    else:
        logits_fn = predict.load_model(args.model, args.device, args.precision).logits
    results = predict.predict_with(logits_fn, args.paths, args.top_k, args.invert, args.batch_size)
    if not results:
        raise FmnistError("no image files found in " + " ".join(args.paths))
    if args.json:
        print(json.dumps(results, indent=1))
    elif args.csv:
        print("path,rank,label,class,prob,error")
        for row in results:
            for rank, top in enumerate(row.get("top", []), 1):
                print(
                    f"{_csv(row['path'])},{rank},{top['label']},{_csv(top['class'])},"
                    f"{top['prob']:.6f},"
                )
            if "error" in row:
                print(f"{_csv(row['path'])},,,,,{_csv(row['error'])}")
    else:
        for row in results:
            if "error" in row:
                print(f"{row['path']}: error: {row['error']}", file=sys.stderr)
                continue
            tops = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in row["top"])
            print(f"{row['path']}: {tops}")
    return 1 if any("error" in row for row in results) else 0


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _export(args) -> int:
    from fmnist_alexnet.export import export

    result = export(args.checkpoint, args.format, args.out, args.data_dir)
    print(
        f"wrote {result['path']} ({result['bytes'] / 2**20:.1f} MiB, {result['format']}); "
        f"input {result['input']}"
    )
    print(
        f"checked on {result['images']} real test images against PyTorch: largest logit "
        f"difference {result['max_abs_logit_diff']:.3g}, top-1 agreement "
        f"{100 * result['top1_agreement']:.2f} %"
    )
    return 0
