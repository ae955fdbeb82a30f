"""What a ``tune`` command leaves in OUT: the one test of the best trial, its recipe as TOML
and as the exact ``train`` command, a table of every trial, and Optuna's plots."""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from optuna import Study

    from fmnist_alexnet.config import TrainConfig
    from fmnist_alexnet.infer.evaluate import Evaluation
    from fmnist_alexnet.tune.study import TuneSettings

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmnist_alexnet.atomic import atomic_write, atomic_write_text
from fmnist_alexnet.recipe import recipe_of, reproduce_command, write_recipe
from fmnist_alexnet.tune.space import trial_config


def write_tune_report(
    study: Study,
    preset: str,
    fixed: dict[str, Any],
    settings: TuneSettings,
    seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    counts = {
        state.name.lower(): sum(t.state == state for t in study.trials)
        for state in optuna.trial.TrialState
    }
    summary: dict[str, Any] = {
        "study": study.study_name,
        "trials": counts,
        "seconds": seconds,
        "best": None,
    }
    out = settings.out
    if done:
        best = study.best_trial
        config = trial_config(preset, fixed, best.params, best.user_attrs["out"])
        test = _test_once(Path(best.user_attrs["out"]), config)
        recipe = {k: v for k, v in recipe_of(config).items() if k not in ("progress",)}
        header = (
            f"fmnist-alexnet tune: study {study.study_name!r}, trial {best.number}\n"
            f"validation accuracy {best.value:.4f}; test accuracy {test.accuracy:.4f} "
            f"(evaluated once, on this trial only)\n"
            f"rerun: fmnist-alexnet train --config {out / 'best_recipe.toml'}"
        )
        write_recipe(out / "best_recipe.toml", recipe, header)
        summary["best"] = {
            "trial": best.number,
            "val_acc": best.value,
            "test_acc": test.accuracy,
            "test_n": test.n,
            "params": best.params,
            "run": best.user_attrs["out"],
            "command": reproduce_command(config.to_dict()),
        }
    summary["plots"] = _plots(study, out, len(done), log)
    atomic_write_text(out / "tune_summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "tune_report.md", _markdown(study, summary, preset, fixed))
    return summary


def _test_once(run_dir: Path, config: TrainConfig) -> Evaluation:
    """The official test set (its first ``--limit-eval`` images if the trials had one)."""
    from fmnist_alexnet.infer.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(
        run_dir / "checkpoints" / "best.pt",
        split="test",
        data_dir=config.data_dir,
        device=config.device,
        batch_size=config.eval_batch_size,
        precision="auto",
        limit=config.limit_eval,
    )


def _plots(study: Study, out: Path, completed: int, log: Callable[[str], None]) -> list[str]:
    """Optuna's matplotlib optimization history and (with two or more completed trials)
    parameter importances; none without matplotlib."""
    try:
        import optuna.visualization.matplotlib as vis

        from fmnist_alexnet.figures import pyplot

        plt = pyplot()
    except ImportError:
        log("no tune plots: matplotlib is not installed (pip install 'fmnist-alexnet[report]')")
        return []
    plots: list[tuple[str, Callable[[Study], Any]]] = [
        ("optimization_history.png", vis.plot_optimization_history)
    ]
    if completed >= 2:
        plots.append(("param_importances.png", vis.plot_param_importances))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks these plots experimental
        for name, plot in plots:
            figure: Figure = plot(study).figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            atomic_write(out / name, _png_writer(figure))
            plt.close(figure)
            written.append(name)
    return written


def _png_writer(figure: Figure) -> Callable[[BinaryIO], None]:
    def write(handle: BinaryIO) -> None:
        figure.savefig(handle, format="png")

    return write


def _markdown(study: Study, summary: dict[str, Any], preset: str, fixed: dict[str, Any]) -> str:
    best = summary["best"]
    fixed_text = ", ".join(f"{k}={v}" for k, v in fixed.items()) or "none"
    lines = [
        f"# Tune report: study {study.study_name}",
        "",
        f"Preset {preset}; fixed settings: {fixed_text}. Trials: "
        + ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)
        + f". This command ran {summary['seconds']:.0f} s.",
        "",
        "Trials are compared on validation accuracy only (the best epoch of each); the test "
        "set was evaluated once, on the best trial.",
        "",
    ]
    if best:
        lines += [
            f"**Best: trial {best['trial']}**, validation accuracy {best['val_acc']:.4f}, "
            f"test accuracy {best['test_acc']:.4f} on {best['test_n']} images.",
            "",
            "```",
            best["command"],
            "fmnist-alexnet train --config best_recipe.toml",
            "```",
            "",
        ]
    names = sorted({name for trial in study.trials for name in trial.params})
    lines.append("| trial | state | val acc | epochs | s | " + " | ".join(names) + " |")
    lines.append("|" + " --- |" * (5 + len(names)))
    for trial in study.trials:
        value = f"{trial.value:.4f}" if trial.value is not None else ""
        note = " (baseline)" if trial.user_attrs.get("baseline") else ""
        wall = trial.user_attrs.get("wall_s")
        cells = [
            f"{trial.number}{note}",
            trial.state.name.lower(),
            value,
            str(trial.user_attrs.get("epochs", "")),
            f"{wall:.0f}" if wall else "",
        ]
        cells += [_cell(trial.params.get(name)) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for trial in study.trials:
        if "error" in trial.user_attrs:
            lines += [f"Trial {trial.number} failed: {trial.user_attrs['error']}", ""]
    for plot in summary["plots"]:
        lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
