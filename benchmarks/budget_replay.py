"""What would a second plan, made part-way through a `--time-budget` run, have chosen?

Budgeted runs plan their epochs after epoch 1 and keep a margin (``budget.SAFETY``) because
one epoch is a noisy sample of the pace; on shared 2-core VMs they then ended anywhere from
6 to 15 minutes inside the hour. This replays finished runs from their own records
(``config.json``'s plan, ``metrics.jsonl``'s elapsed time per epoch, ``test_metrics.json``'s
time to the test result) and asks, for a second plan at the end of epoch K: with the mean
pace of epochs 2..K and a margin on the remaining epochs only, how many epochs would have
fit, and when would the run have ended if each added epoch took the mean of the run's own
epochs after K? Arithmetic on measured times, not a run: the learning rates of a run planned
twice differ, so its accuracy needs runs of its own.

Usage: python benchmarks/budget_replay.py RUN [RUN ...] [--at 4] [--margin 1.136]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def replay(run: Path, at: int, margin: float, cap: int = 40, finish_s: float = 20.0) -> dict:
    config = json.loads((run / "config.json").read_text())
    plan = config["runtime"]["time_budget"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ends = [row["elapsed_s"] for row in rows]
    epochs = len(ends)
    if config.get("start_epochs") or epochs <= at:
        raise SystemExit(f"{run}: needs one resolution and more than {at} epochs")
    to_test = json.loads((run / "test_metrics.json").read_text())["wall_s"]
    tail = to_test - ends[-1]  # the final test, after the last epoch
    pace = (ends[at - 1] - ends[0]) / (at - 1)  # epochs 2..K
    later = statistics.mean(b - a for a, b in zip(ends[at - 1 :], ends[at:], strict=False))
    # What the plan reserves after the last epoch, scaled as its first plan scaled it.
    after = plan["test_s"] + plan["report_s"] + plan["finish_s"]
    more = math.floor((plan["budget_s"] - ends[at - 1] - after) / (pace * margin))
    total = min(cap, at + max(0, more))
    predicted = ends[at - 1] + (total - at) * later + tail
    whole = predicted + finish_s  # the report and the process's exit after the test
    return {
        "run": run.name,
        "epochs_run": epochs,
        "to_test_s": round(to_test, 1),
        "unused_s": round(plan["budget_s"] - to_test, 1),
        "pace_2_to_k_s": round(pace, 1),
        "pace_after_k_s": round(later, 1),
        "second_plan_epochs": total,
        "predicted_to_test_s": round(predicted, 1),
        "predicted_whole_s": round(whole, 1),
        "predicted_over_s": round(max(0.0, whole - plan["budget_s"]), 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--at", type=int, default=4, help="the epoch K that ends before it")
    parser.add_argument(
        "--margin", type=float, default=1.136, help="each remaining epoch planned at pace x this"
    )
    parser.add_argument("--cap", type=int, default=40, help="the preset's --epochs, the most")
    parser.add_argument(
        "--finish", type=float, default=20.0, help="seconds from the test result to the exit"
    )
    args = parser.parse_args(argv)
    results = [replay(run, args.at, args.margin, args.cap, args.finish) for run in args.runs]
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
