"""The YOLOv5 plot files: results.png, labels.jpg, train/val batch mosaics, P/R/F1/PR curves, confusion matrix.

Pure functions: arrays in, one image file out, the written Path returned. Matplotlib renders off-screen (Agg)
with its bundled DejaVu fonts; image mosaics are drawn with Pillow's built-in font, so nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # figures without pyplot: no global backend, no display, nothing to close
from PIL import Image, ImageDraw, ImageFont

from .draw import class_colour
from .metrics import ClassMetrics, smooth
from .results import read_results

# results.png panels in YOLOv5's order, by position in results.csv's columns (the loss names are the model's):
# train losses, P, R on top; val losses, mAPs below
RESULT_PANELS = (0, 1, 2, 3, 4, 7, 8, 9, 5, 6)
MAX_CURVE_LEGEND = 20  # above this many classes the per-class lines are grey and unlabelled
MAX_MATRIX_ANNOTATED = 30  # cell values are written when nc is below this
MIN_TAG_CONF = 0.25  # predictions at or below this are not drawn in val_batch*_pred.jpg


def _class_name(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def _rgb(index: int) -> tuple[float, float, float]:
    """class_colour as matplotlib's 0-1 floats."""
    return tuple(c / 255 for c in class_colour(index))


def _subplots(rows: int, columns: int, figsize: tuple[float, float], tight_layout: bool = False,
              squeeze: bool = True):
    """(figure, axes) as pyplot.subplots makes them, on a Figure of its own (rendered by Agg when saved)."""
    fig = Figure(figsize=figsize, tight_layout=tight_layout)
    return fig, fig.subplots(rows, columns, squeeze=squeeze)


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def gaussian_smooth(values: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """1-D Gaussian filter with mirrored edges, as scipy's gaussian_filter1d(mode='reflect'); same length out."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return values
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(values, radius, mode="symmetric")
    return np.convolve(padded, kernel, mode="valid")


def plot_results(results_csv: Path) -> Path:
    """results.png beside results_csv: the ten loss and metric columns against epoch, each with a smoothed line."""

    results_csv = Path(results_csv)
    rows = read_results(results_csv)
    epochs = np.array([row.get("epoch", i) for i, row in enumerate(rows)], dtype=float)
    columns = [k for k in rows[0] if k != "epoch"] if rows else []
    fig, axes = _subplots(2, 5, figsize=(12, 6), tight_layout=True)
    for ax, column in zip(axes.ravel(), (columns[i] for i in RESULT_PANELS if i < len(columns))):
        values = np.array([row.get(column, np.nan) for row in rows], dtype=float)
        ax.set_title(column, fontsize=12)
        if not np.isfinite(values).any():
            continue
        ax.plot(epochs, values, marker=".", label=results_csv.stem, linewidth=2, markersize=8)
        ax.plot(epochs, gaussian_smooth(values), ":", label="smooth", linewidth=2)
    axes.ravel()[1].legend()
    return _save(fig, results_csv.with_name("results.png"), dpi=200)


def plot_labels(labels: list[np.ndarray], names: list[str], save_dir: Path) -> Path:
    """labels.jpg: instances per class, a sample of boxes drawn at the centre, and histograms of (x, y) and (w, h).

    labels: per image (k, 5) = (class, x, y, w, h), coordinates normalised to 0-1.
    """
    rows = [np.asarray(x, dtype=float).reshape(-1, 5) for x in labels]
    table = np.concatenate(rows, 0) if rows else np.zeros((0, 5))
    classes = table[:, 0].astype(int)
    nc = max(len(names), int(classes.max()) + 1 if len(classes) else 0, 1)
    counts = np.bincount(classes, minlength=nc)

    fig, axes = _subplots(2, 2, figsize=(8, 8), tight_layout=True)
    axes = axes.ravel()
    bars = axes[0].bar(range(nc), counts, color=[_rgb(c) for c in range(nc)], width=0.8)
    axes[0].set_ylabel("instances")
    axes[0].set_xlim(-0.6, nc - 0.4)
    axes[0].set_ylim(0, max(int(counts.max()), 1) * 1.1)  # no negative counts when there are no labels
    if nc < 30:
        axes[0].set_xticks(range(nc), [_class_name(names, c) for c in range(nc)], rotation=90, fontsize=10)
        if nc <= 10:
            axes[0].bar_label(bars, fontsize=8)
    else:
        axes[0].set_xlabel("classes")

    # yolov5 parity: up to 1000 boxes, all centred, show the spread of shapes
    canvas = Image.new("RGB", (2000, 2000), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for cls, _, _, w, h in table[:1000]:
        half_w, half_h = w * 1000, h * 1000
        draw.rectangle((1000 - half_w, 1000 - half_h, 1000 + half_w, 1000 + half_h), outline=class_colour(int(cls)),
                       width=3)
    axes[1].imshow(np.asarray(canvas))
    axes[1].set_title(f"{len(table)} boxes, {min(len(table), 1000)} drawn", fontsize=10)
    axes[1].axis("off")

    for ax, (a, b), (xlabel, ylabel) in ((axes[2], (1, 2), ("x", "y")), (axes[3], (3, 4), ("width", "height"))):
        ax.hist2d(table[:, a], table[:, b], bins=50, range=[[0, 1], [0, 1]], cmap="Blues", cmin=1, vmin=0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_aspect("equal")
    axes[2].invert_yaxis()  # image coordinates: y grows downwards
    return _save(fig, Path(save_dir) / "labels.jpg", dpi=200)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(size, 8))


def plot_images(images: torch.Tensor, targets: torch.Tensor, paths: Sequence[str | Path] | None, path: Path,
                names: list[str], max_subplots: int = 16, max_size: int = 1920) -> Path:
    """A mosaic of up to max_subplots images with their boxes: train_batch*.jpg, val_batch*_labels/_pred.jpg.

    images: (B, 3, H, W) uint8 (floats in 0-1 are scaled). targets: (N, 6) (image index, class, x, y, w, h) or
    (N, 7) with a trailing confidence; boxes normalised to 0-1 or, as YOLOv5's output_to_target, in pixels.
    Labels are tagged "name", predictions "name conf" and only drawn above MIN_TAG_CONF.
    """
    images = images[:max_subplots]  # before any copy: a validation batch can be large
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    images = np.asarray(images, dtype=float)
    if images.size and images.max() <= 1:
        images = images * 255  # de-normalise
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().float().numpy()
    targets = np.asarray(targets, dtype=float)
    if targets.ndim != 2:
        targets = targets.reshape(0, 6)

    batch, _, height, width = images.shape
    batch = min(batch, max_subplots)
    grid = math.ceil(batch ** 0.5)  # tiles per side
    scale = max_size / grid / max(height, width)
    scale = min(scale, 1.0)  # never upsample
    tile_h, tile_w = math.ceil(height * scale), math.ceil(width * scale)
    mosaic = Image.new("RGB", (grid * tile_w, grid * tile_h), (255, 255, 255))
    draw = ImageDraw.Draw(mosaic)
    font_size = max(round(0.01 * (tile_h + tile_w) * grid / 2), 10)  # grows with the mosaic, readable when small
    font = _font(font_size)
    line_width = max(round(font_size / 10), 1)
    has_conf = targets.shape[1] == 7

    for i in range(batch):
        x0, y0 = (i % grid) * tile_w, (i // grid) * tile_h
        tile = Image.fromarray(images[i].transpose(1, 2, 0).clip(0, 255).astype(np.uint8))
        if scale < 1:
            tile = tile.resize((tile_w, tile_h), Image.Resampling.BILINEAR)
        mosaic.paste(tile, (x0, y0))
        draw.rectangle((x0, y0, x0 + tile_w - 1, y0 + tile_h - 1), outline=(255, 255, 255), width=2)
        if paths is not None and i < len(paths):
            draw.text((x0 + 5, y0 + 5), Path(paths[i]).name[:40], fill=(220, 220, 220), font=font,
                      stroke_width=1, stroke_fill=(0, 0, 0))

        rows = targets[targets[:, 0] == i]
        if not len(rows):
            continue
        boxes_xywh = rows[:, 2:6].copy()
        if boxes_xywh.max() <= 1.01:  # normalised
            boxes_xywh *= [tile_w, tile_h, tile_w, tile_h]
        elif scale < 1:  # pixels of the unscaled image
            boxes_xywh *= scale
        offset = np.array([x0, y0, x0, y0])
        boxes_xyxy = np.concatenate((boxes_xywh[:, :2] - boxes_xywh[:, 2:] / 2,
                                     boxes_xywh[:, :2] + boxes_xywh[:, 2:] / 2), 1) + offset
        for box, cls, conf in zip(boxes_xyxy.tolist(), rows[:, 1].astype(int).tolist(),
                                  rows[:, 6].tolist() if has_conf else [None] * len(rows)):
            if conf is not None and conf <= MIN_TAG_CONF:
                continue
            colour = class_colour(cls)
            draw.rectangle(box, outline=colour, width=line_width)
            text = _class_name(names, cls) if conf is None else f"{_class_name(names, cls)} {conf:.1f}"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            text_w, text_h = right - left + 4, bottom - top + 4
            tag_x = max(x0, min(box[0], x0 + tile_w - text_w))  # keep the tag inside its tile
            tag_y = box[1] - text_h if box[1] - text_h >= y0 else box[1]
            draw.rectangle((tag_x, tag_y, tag_x + text_w, tag_y + text_h), fill=colour)
            draw.text((tag_x + 2, tag_y + 2 - top), text, fill=(255, 255, 255), font=font)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mosaic.save(path)
    return path


def plot_curves(curve_x: np.ndarray, curves: np.ndarray, names: list[str], classes: Sequence[int], ylabel: str,
                path: Path, xlabel: str = "Confidence") -> Path:
    """P_curve.png, R_curve.png or F1_curve.png: one thin line per class and the smoothed mean, best value noted.

    curve_x: (1000,) confidence; curves: (k, 1000) for the k classes `classes` (indices into names).
    """
    curves = np.asarray(curves, dtype=float).reshape(-1, len(curve_x))
    fig, ax = _subplots(1, 1, figsize=(9, 6), tight_layout=True)
    labelled = 0 < len(curves) <= MAX_CURVE_LEGEND
    for row, cls in zip(curves, classes):
        if labelled:
            ax.plot(curve_x, row, linewidth=1, label=_class_name(names, int(cls)), color=_rgb(int(cls)))
        else:
            ax.plot(curve_x, row, linewidth=1, color="grey")
    if len(curves):
        mean = smooth(curves.mean(0), 0.05)
        best = int(mean.argmax())
        ax.plot(curve_x, mean, linewidth=3, color="blue",
                label=f"all classes {mean[best]:.2f} at {curve_x[best]:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if len(curves):
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(f"{ylabel}-{xlabel} Curve")
    return _save(fig, path, dpi=250)


def plot_pr_curve(recall_x: np.ndarray, pr: np.ndarray, ap50: np.ndarray, names: list[str],
                  classes: Sequence[int], path: Path) -> Path:
    """PR_curve.png: precision against recall per class, labelled with its AP@0.5, and the mean line with mAP@0.5.

    recall_x: (1000,); pr: (k, 1000) precision envelopes; ap50: (k,) for the k classes `classes`.
    """
    pr = np.asarray(pr, dtype=float).reshape(-1, len(recall_x))
    ap50 = np.asarray(ap50, dtype=float).reshape(-1)
    fig, ax = _subplots(1, 1, figsize=(9, 6), tight_layout=True)
    labelled = 0 < len(pr) <= MAX_CURVE_LEGEND
    for row, ap, cls in zip(pr, ap50, classes):
        if labelled:
            ax.plot(recall_x, row, linewidth=1, label=f"{_class_name(names, int(cls))} {ap:.3f}",
                    color=_rgb(int(cls)))
        else:
            ax.plot(recall_x, row, linewidth=1, color="grey")
    if len(pr):
        ax.plot(recall_x, pr.mean(0), linewidth=3, color="blue", label=f"all classes {ap50.mean():.3f} mAP@0.5")
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Precision-Recall Curve")
    return _save(fig, path, dpi=250)


def plot_metric_curves(details: ClassMetrics, names: list[str], save_dir: Path) -> list[Path]:
    """PR_curve.png, F1_curve.png, P_curve.png and R_curve.png in save_dir from ap_per_class's results."""
    save_dir = Path(save_dir)
    x, classes = details.curve_x, details.classes
    ap50 = details.ap[:, 0] if details.ap.ndim == 2 and details.ap.shape[1] else np.zeros(len(classes))
    return [
        plot_pr_curve(x, details.pr_curve, ap50, names, classes, save_dir / "PR_curve.png"),
        plot_curves(x, details.f1_curve, names, classes, "F1", save_dir / "F1_curve.png"),
        plot_curves(x, details.precision_curve, names, classes, "Precision", save_dir / "P_curve.png"),
        plot_curves(x, details.recall_curve, names, classes, "Recall", save_dir / "R_curve.png"),
    ]


def plot_confusion_matrix(matrix: np.ndarray, names: list[str], path: Path, normalize: bool = True) -> Path:
    """confusion_matrix.png from ConfusionMatrix.matrix (nc + 1, nc + 1): rows predicted, columns true.

    Columns are normalised to sum to 1 (the share of each true class); the last row and column are background.
    """
    matrix = np.asarray(matrix, dtype=float)
    nc = matrix.shape[0] - 1
    values = matrix / (matrix.sum(0, keepdims=True) + 1e-9) if normalize else matrix.copy()
    values[values < 0.005] = np.nan  # yolov5 parity: near-empty cells are left blank

    fig, ax = _subplots(1, 1, figsize=(12, 9), tight_layout=True)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if 0 < len(names) < 99 and len(names) == nc:
        tick_labels = [*names, "background"]
        font_size = 10 if nc < 30 else 6
        ax.set_xticks(range(nc + 1), tick_labels, rotation=90, fontsize=font_size)
        ax.set_yticks(range(nc + 1), tick_labels, fontsize=font_size)
    if nc < MAX_MATRIX_ANNOTATED:
        threshold = np.nanmax(values) / 2 if np.isfinite(values).any() else 0
        for (row, col), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(col, row, f"{value:.2f}" if normalize else f"{value:g}", ha="center", va="center",
                        fontsize=8, color="white" if value > threshold else "black")
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    return _save(fig, path, dpi=250)


def plot_evolve(evolve_csv: Path, header: list[str], rows: np.ndarray) -> Path:
    """evolve.png beside evolve.csv: one scatter per hyperparameter against fitness, the best generation marked."""
    from .metrics import fitness

    keys = header[7:]
    scores = fitness(rows)
    best = int(np.argmax(scores))
    columns = min(5, max(1, len(keys)))
    grid_rows = max(1, -(-len(keys) // columns))
    fig, axes = _subplots(grid_rows, columns, figsize=(3.2 * columns, 2.6 * grid_rows), squeeze=False)
    for ax, (j, key) in zip(axes.ravel(), enumerate(keys, start=7)):
        ax.scatter(rows[:, j], scores, c=scores, cmap="viridis", s=18, alpha=0.8, edgecolors="none")
        ax.plot(rows[best, j], scores[best], "k+", markersize=14)
        ax.set_title(f"{key} = {rows[best, j]:.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"fitness of {len(rows)} generations (best + = generation {best})", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(evolve_csv).with_name("evolve.png"), 200)


def compute_curve(history: list[dict]) -> tuple[list[int], list[float], list[tuple[int, float, bool]]]:
    """From evolve_rungs.csv rows in order: after each finished candidate, the candidate-epochs spent so far and the
    best fitness of a candidate trained in full; and each finished candidate as (epochs spent, its fitness,
    stopped at a rung). A candidate finishes with a record that stops it, or at the largest epoch count seen."""
    full_epochs = max((r["epochs"] for r in history), default=0)
    spent, best, points, curve_x, curve_y = 0, float("nan"), [], [], []
    for record in history:
        spent += record["spent"]
        if record["stopped"] or record["epochs"] == full_epochs:
            if not record["stopped"]:
                best = record["fitness"] if best != best else max(best, record["fitness"])
            points.append((spent, record["fitness"], record["stopped"]))
            curve_x.append(spent)
            curve_y.append(best)
    return curve_x, curve_y, points


def plot_evolve_compute(path: Path, history: list[dict]) -> Path | None:
    """evolve_compute.png: the best fitness reached against the candidate-epochs spent (successive halving stops
    weak candidates early: the same curve for less compute)."""
    curve_x, curve_y, points = compute_curve(history)
    if not points:
        return None
    fig, ax = _subplots(1, 1, figsize=(6, 4), tight_layout=True)
    ax.step(curve_x, curve_y, where="post", color="C0", label="best fitness (full candidates)")
    for stopped, colour, label in ((False, "C0", "full candidate"), (True, "0.6", "at a rung, short of full")):
        chosen = [(x, y) for x, y, s in points if s == stopped]
        if chosen:
            ax.scatter(*zip(*chosen), s=14, color=colour, label=label, zorder=3)
    ax.set_xlabel("candidate-epochs spent")
    ax.set_ylabel("fitness (0.1 mAP50 + 0.9 mAP50-95)")
    ax.legend(fontsize=8)
    return _save(fig, path, 150)
