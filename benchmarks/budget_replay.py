"""How many epochs would `--schedule wsd`'s later plans have fitted into a finished run's budget?

Budgeted runs plan their epochs after epoch 1 and keep a 12 % margin (``budget.SAFETY``)
because one epoch is a noisy sample of the pace; on shared 2-core VMs they then ended
anywhere from 6 to 15 minutes inside the hour. A ``wsd`` run plans again after every epoch
that ends before its decay (``budget.replan_late``, the margin on the time still to run).
This replays that rule, with the package's own functions, over finished runs' records:
``config.json``'s plan after epoch 1, ``metrics.jsonl``'s elapsed time at each epoch's end,
``test_metrics.json``'s time to the test result. Epochs past the ones a run trained are
taken to cost the mean of its epochs after the first. Arithmetic on measured times, not a
run: a wsd run's rates differ from the one-cycle's these runs had, so its accuracy needs
runs of its own.

Usage: python benchmarks/budget_replay.py RUN [RUN ...] [--cooldown 0.3]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fmnist_alexnet.budget import BudgetPlan, replan_late
from fmnist_alexnet.config import TrainConfig, replace
from fmnist_alexnet.optim import cooldown_start, least_epochs

CAP = 40  # hour's --epochs
FINISH_S = 20.0  # from the test result to the command's exit: 17-18 s in the hour runs


def replay(run: Path, cooldown: float) -> dict:
    saved = json.loads((run / "config.json").read_text())
    recorded = saved["runtime"]["time_budget"]
    spe = saved["runtime"]["steps_per_epoch"]
    ends = [json.loads(line)["elapsed_s"] for line in (run / "metrics.jsonl").open()]
    if saved.get("start_epochs") or len(ends) < 3:
        raise SystemExit(f"{run}: needs one resolution and at least 3 epochs")
    tail = json.loads((run / "test_metrics.json").read_text())["wall_s"] - ends[-1]
    pace = statistics.mean(b - a for a, b in zip(ends, ends[1:], strict=False))
    save = recorded["save_s"]
    plan = BudgetPlan(
        **{k: recorded[k] for k in ("budget_s", "epochs", "epoch_s", "test_s", "report_s")},
        spent_s=recorded["spent_s"],
        warmup_s=0.0,
        train_images_per_sec=recorded["train_images_per_sec"],
        eval_images_per_sec=recorded["eval_images_per_sec"],
        save_s=save,
        costs=[recorded["epoch_s"][0]] + [recorded["epoch_s"][-1]] * (CAP - 1),
    )
    config = TrainConfig(schedule="wsd", cooldown=cooldown, epochs=plan.epochs)

    def end(epoch: int) -> float:  # elapsed at the end of 1-based ``epoch``, its save included
        extra = max(0, epoch - len(ends))
        return ends[min(epoch, len(ends)) - 1] + extra * pace + save

    plans = []
    epoch = 2
    while epoch * spe <= cooldown_start(config, spe):
        least = least_epochs(config, spe, epoch * spe)
        plan = replan_late(plan, end(epoch), epoch, end(epoch) - end(1), least)
        config = replace(config, {"epochs": plan.epochs})
        plans.append(plan.epochs)
        epoch += 1
    whole = end(config.epochs) - save + tail + FINISH_S
    return {
        "run": run.name,
        "epochs_run": len(ends),
        "whole_s_as_run": round(ends[-1] + tail + FINISH_S, 1),
        "wsd_plans": plans,
        "wsd_epochs": config.epochs,
        "wsd_whole_s": round(whole, 1),
        "wsd_over_s": round(max(0.0, whole - plan.budget_s), 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--cooldown", type=float, default=0.3, help="wsd's decay share")
    args = parser.parse_args(argv)
    results = [replay(run, args.cooldown) for run in args.runs]
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
