"""Whether an early epoch ranks evolve's candidates as their last epoch does: what `--halving` relies on.

    python benchmarks/rung_ranking.py OUT/plain-seed1 --weights W --img 64 [--short 3 9] --out /tmp/rung-ranking

Retrains every candidate of a finished plain search (its evolve.csv rows, the same settings: --data, --cfg,
--weights, --img, --batch-size, --workers and the folder's --epochs) with validation after every epoch, as a rung
validates, and reports per epoch the rank correlation (Spearman) of the candidates' fitness there with their fitness
at the last epoch, and whether the best candidate at the end is in the top third there (the cut a rung makes). The
last epoch's fitness is checked against the ledger's (validating at rungs must not change training). `--short 3 9`
also trains each candidate for a whole schedule of that many epochs (its learning rate decayed in that time) and
ranks those ends the same way. The last stdout line is one JSON object; OUT/curves.json holds every fitness.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search", type=Path, help="a plain evolve folder (evolve.csv, opt.yaml)")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--weights", default="")
    parser.add_argument("--img", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--short", type=int, nargs="*", default=[], help="whole schedules of these many epochs")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(x)) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def best_in_top_third(scores: list[float], final: list[float]) -> bool:
    top = np.argsort(scores)[::-1][:math.ceil(len(scores) / 3)]
    return int(np.argmax(final)) in top


def train_curve(config, hyp: dict[str, float], folder: Path, epochs: int, every_epoch: bool) -> list[float]:
    """Fitness after each epoch (every_epoch) or only the last, trained the way evolve trains a candidate."""
    from yolo_accel.evolve import train_candidate
    from yolo_accel.metrics import fitness

    curve: list[float] = []

    def record(_: int, score: float) -> bool:
        curve.append(score)
        return True  # never stops

    folder.mkdir(parents=True, exist_ok=True)
    results, _ = train_candidate(replace(config, epochs=epochs), hyp, folder, on_rung=record,
                                 rungs=tuple(range(1, epochs + 1)) if every_epoch else (epochs,))
    return [round(f, 6) for f in [*curve, float(fitness(np.array(list(results.values())[:4])))]]


def main() -> None:
    args = parse()
    from yolo_accel.config import TrainConfig
    from yolo_accel.evolve import read_ledger
    from yolo_accel.metrics import fitness

    epochs = int(yaml.safe_load((args.search / "opt.yaml").read_text())["epochs"])
    header, rows = read_ledger(args.search / "evolve.csv")
    hyps = [{k: float(row[i]) for i, k in enumerate(header) if i >= 7} for row in rows]
    ledger = fitness(rows).tolist()
    config = TrainConfig(data=args.data, model=args.cfg, weights=args.weights, imgsz=args.img,
                         batch_size=args.batch_size, workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "curves.json"
    curves = json.loads(saved.read_text()) if saved.exists() else {}  # an interrupted run continues
    for n, hyp in enumerate(hyps):
        for key, length, every in [(f"full-{n}", epochs, True), *[(f"short{e}-{n}", e, False) for e in args.short]]:
            if key not in curves:
                curves[key] = train_curve(config, hyp, args.out / key, length, every)
                saved.write_text(json.dumps(curves))
    full = [curves[f"full-{n}"] for n in range(len(hyps))]
    final = [c[-1] for c in full]
    summary = {
        "candidates": len(hyps), "epochs": epochs,
        "final_equals_ledger": bool(np.allclose(final, ledger, atol=1e-4)),
        "best_final": max(final),
        "per_epoch": [{"epoch": e + 1, "spearman": round(spearman([c[e] for c in full], final), 3),
                       "best_in_top_third": best_in_top_third([c[e] for c in full], final)}
                      for e in range(epochs - 1)],
        "short": [{"epochs": e, "spearman": round(spearman(ends, final), 3),
                   "best_in_top_third": best_in_top_third(ends, final)}
                  for e in args.short for ends in [[curves[f"short{e}-{n}"][-1] for n in range(len(hyps))]]],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
