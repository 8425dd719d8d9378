"""What successive halving saves: YOLOv5's genetic search with and without `--halving`, same candidate budget.

    python benchmarks/evolve_budget.py --data demo --epochs 9 --candidates 12 --seeds 0 1 2 --out /tmp/evolve-budget \
        [--weights runs/train/exp/weights/best.safetensors] [--modes plain halving restarts]

Modes: plain (YOLOv5's search), halving (`--halving`: rungs within one run), restarts (`--halving --restarts`:
promotions, each rung a run of its own). For each seed (the search's own random draws; every candidate trains
with seed 0, as `yolo-accel evolve` does) each mode runs one worker over the same number of candidates. Reported
per run: the best fitness (0.1 mAP50 + 0.9 mAP50-95 of a candidate trained in full), the candidate-epochs spent and
the wall time; then the means per mode, the plain search's best within the compute each halving run spent, and
OUT/evolve_budget.png (best fitness against candidate-epochs, every run). Each finished run is appended to
OUT/runs.jsonl, so an interrupted benchmark continues. The last stdout line is one JSON object.

`--retrain-seeds 1 2 3` also trains each search's chosen hyperparameters (its hyp_evolve.yaml) again with those
training seeds, as a user does next with `train --hyp`, and reports their fitness and its mean with the search's
own (training seed 0): a search's best fitness is the best of its candidates' single runs, so it is the high end of
what its hyperparameters reach, and this measures what they deliver (each result appended to OUT/retrain.jsonl).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

MODES = ("plain", "halving", "restarts")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--weights", default="", help="every candidate starts from these (YOLOv5's usual evolve)")
    parser.add_argument("--epochs", type=int, default=9, help="epochs of a candidate trained in full")
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--img", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--retrain-seeds", type=int, nargs="*", default=[],
                        help="train each search's hyp_evolve.yaml again with these training seeds")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def candidate_config(args: argparse.Namespace):
    """The training options every candidate of every search shares."""
    from yolo_accel.config import TrainConfig

    return TrainConfig(data=args.data, model=args.cfg, weights=args.weights, epochs=args.epochs, imgsz=args.img,
                       batch_size=args.batch_size, workers=args.workers)


def run_search(args: argparse.Namespace, seed: int, mode: str) -> dict:
    from yolo_accel.evolve import evolve
    from yolo_accel.plots import compute_curve
    from yolo_accel.rungs import read_rungs

    name = f"{mode}-seed{seed}"
    config = candidate_config(args)
    start = time.perf_counter()
    folder = evolve(config, generations=args.candidates, project=str(args.out), name=name, resume=str(args.out / name),
                    seed=seed, halving=mode != "plain", restarts=mode == "restarts")
    spent, best, _ = compute_curve(read_rungs(folder / "evolve_rungs.csv"))
    return {"mode": mode, "seed": seed, "best_fitness": round(best[-1], 4),
            "candidate_epochs": spent[-1], "minutes": round((time.perf_counter() - start) / 60, 1),
            "curve": [spent, [round(b, 4) for b in best]]}


def retrain(args: argparse.Namespace, run: dict, train_seed: int) -> dict:
    """The fitness of a search's chosen hyperparameters trained again with another training seed (as a candidate
    trains: the same epochs, validation at the last)."""
    from dataclasses import replace

    import yaml

    from yolo_accel.evolve import result_fitness, train_candidate
    from yolo_accel.train import with_model_defaults

    name = f"{run['mode']}-seed{run['seed']}"
    hyp = yaml.safe_load((args.out / name / "hyp_evolve.yaml").read_text())
    config = with_model_defaults(candidate_config(args))
    results, _ = train_candidate(replace(config, seed=train_seed), hyp,
                                 args.out / "retrain" / name / f"train-seed{train_seed}")
    return {"mode": run["mode"], "seed": run["seed"], "train_seed": train_seed,
            "fitness": round(result_fitness(results), 4)}


def plot(runs: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), tight_layout=True)
    ax = fig.subplots()
    for run in runs:
        colour = f"C{MODES.index(run['mode'])}"
        ax.step(*run["curve"], where="post", color=colour, alpha=0.8,
                label=run["mode"] if run["seed"] == min(r["seed"] for r in runs if r["mode"] == run["mode"]) else None)
    ax.set_xlabel("candidate-epochs spent")
    ax.set_ylabel("best fitness so far")
    ax.legend()
    fig.savefig(path, dpi=150)


def plain_best_within(runs: list[dict], seed: int, spent: int) -> float | None:
    """The plain search's best fitness after at most `spent` candidate-epochs (the same compute as halving's)."""
    plain = next((r for r in runs if r["mode"] == "plain" and r["seed"] == seed), None)
    if plain is None:
        return None
    reached = [b for e, b in zip(*plain["curve"]) if e <= spent]
    return reached[-1] if reached else None


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data == "demo":
        from yolo_accel.data.demo import demo_dataset

        args.data = str(demo_dataset())
    ledger = args.out / "runs.jsonl"
    runs = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.is_file() else []
    retrain_ledger = args.out / "retrain.jsonl"
    retrained = [json.loads(line) for line in retrain_ledger.read_text().splitlines()] \
        if retrain_ledger.is_file() else []
    for seed in args.seeds:
        for mode in args.modes:
            run = next((r for r in runs if r["mode"] == mode and r["seed"] == seed), None)
            if run is None:
                run = run_search(args, seed, mode)
                print(json.dumps({k: v for k, v in run.items() if k != "curve"}), file=sys.stderr)
                with open(ledger, "a") as f:
                    f.write(json.dumps(run) + "\n")
                runs.append(run)
            for train_seed in args.retrain_seeds:
                if any(r["mode"] == mode and r["seed"] == seed and r["train_seed"] == train_seed for r in retrained):
                    continue
                result = retrain(args, run, train_seed)
                print(json.dumps(result), file=sys.stderr)
                with open(retrain_ledger, "a") as f:
                    f.write(json.dumps(result) + "\n")
                retrained.append(result)
    plot(runs, args.out / "evolve_budget.png")
    summary = {"data": args.data, "epochs": args.epochs, "candidates": args.candidates, "seeds": args.seeds}
    for mode in MODES:
        chosen = [r for r in runs if r["mode"] == mode and r["seed"] in args.seeds]
        if chosen:
            summary[mode] = {"best_fitness": [r["best_fitness"] for r in chosen],
                             "candidate_epochs": [r["candidate_epochs"] for r in chosen],
                             "mean_best_fitness": round(statistics.mean(r["best_fitness"] for r in chosen), 4),
                             "mean_candidate_epochs": statistics.mean(r["candidate_epochs"] for r in chosen),
                             "minutes": [r["minutes"] for r in chosen]}
            if args.retrain_seeds:  # per search: its own best (training seed 0), then each retrain's fitness
                delivered = [[r["best_fitness"]] + [t["fitness"] for t in retrained if t["mode"] == mode and
                                                    t["seed"] == r["seed"] and t["train_seed"] in args.retrain_seeds]
                             for r in chosen]
                summary[mode]["retrained"] = delivered
                summary[mode]["mean_retrained"] = round(statistics.mean(f for d in delivered for f in d), 4)
    for mode in ("halving", "restarts"):
        if "plain" in summary and mode in summary:
            summary[mode]["compute_ratio"] = round(summary[mode]["mean_candidate_epochs"] /
                                                   summary["plain"]["mean_candidate_epochs"], 3)
            summary[mode]["plain_best_at_same_compute"] = [plain_best_within(runs, seed, r["candidate_epochs"])
                                                           for seed in args.seeds for r in runs
                                                           if r["mode"] == mode and r["seed"] == seed]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
