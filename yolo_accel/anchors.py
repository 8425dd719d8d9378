"""AutoAnchor (YOLOv5 v7.0): measure how well the Detect anchors fit a dataset's boxes, and re-fit them when they
do not, with k-means on the label sizes followed by a genetic evolution of the anchors.

Everything random draws from an explicit numpy Generator, so a seed gives the same anchors on every process.
Pure apart from `check_anchors`, which writes new anchors into the Detect head in place.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .model.yolo import apply_anchor_order
from .progress import Progress

LOGGER = logging.getLogger("yolo_accel")
PREFIX = "AutoAnchor: "
GOOD_FIT_RECALL = 0.98  # best possible recall above which the current anchors are kept without a re-fit
SCALE_RANGE = (0.9, 1.1)  # per-image scale augmentation applied to label sizes before measuring the fit
KMEANS_RESTARTS = 30  # yolov5 parity: scipy.cluster.vq.kmeans(..., iter=30), the best of 30 seeded runs
KMEANS_TOLERANCE = 1e-5  # stop a run when the mean distance changes less than this (scipy's default)
KMEANS_MAX_ITERATIONS = 300  # a bound scipy does not have; runs on label sizes converge in tens of iterations
MUTATION_PROBABILITY = 0.9  # chance that each anchor coordinate is perturbed in a generation
MUTATION_SIGMA = 0.1
MUTATION_CLIP = (0.3, 3.0)  # bounds on the multiplicative change of one generation
MIN_ANCHOR_SIDE = 2.0  # pixels; evolved anchors never shrink below this
SMALL_LABEL_SIDE = 3.0  # pixels; labels with a side below this trigger a warning
KEEP_LABEL_SIDE = 2.0  # pixels; labels with neither side at least this are left out of the fit


class LabelledImages(Protocol):
    """What AutoAnchor needs of a dataset (YoloDataset has both)."""

    shapes: np.ndarray  # (n, 2) image (width, height) in pixels
    labels: Sequence[np.ndarray]  # n arrays (k, 5): class, x, y, w, h normalised


@dataclass(frozen=True)
class AnchorCheck:
    """Outcome of `check_anchors`; recalls are measured on the scale-augmented label sizes."""

    best_possible_recall: float  # of the anchors the model came with
    anchors_per_label: float  # mean number of those anchors within the ratio threshold of a label
    new_best_possible_recall: float | None  # of the re-fitted anchors; None when no re-fit was attempted
    replaced: bool  # True when the Detect head now holds the re-fitted anchors


def compute_ratio_metric(label_wh: torch.Tensor, anchors_wh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv5's shape match: label_wh (m, 2), anchors_wh (n, 2), both pixels ->
    (x (m, n): the worse side's min(r, 1/r) with r = label / anchor, 1 for identical boxes; best (m,): x.max(1))."""
    ratio = label_wh[:, None] / anchors_wh[None]  # (m, n, 2)
    x = torch.min(ratio, 1 / ratio).min(2).values  # (m, n)
    return x, x.max(1).values


def anchor_metrics(anchors_wh: torch.Tensor | np.ndarray, label_wh: torch.Tensor | np.ndarray,
                   threshold: float = 4.0) -> tuple[float, float]:
    """anchors_wh (n, 2), label_wh (m, 2), pixels -> (best possible recall: fraction of labels with at least one anchor
    within `threshold` in both sides' ratio; anchors above threshold: mean number of such anchors per label)."""
    anchors = torch.as_tensor(anchors_wh).detach().cpu().float().view(-1, 2)
    labels = torch.as_tensor(label_wh).detach().cpu().float().view(-1, 2)
    x, best = compute_ratio_metric(labels, anchors)
    best_possible_recall = (best > 1 / threshold).float().mean()
    anchors_above_threshold = (x > 1 / threshold).float().sum(1).mean()
    return float(best_possible_recall), float(anchors_above_threshold)


def label_sizes(shapes: np.ndarray, labels: Sequence[np.ndarray], imgsz: int,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Label (width, height) in pixels once each image is resized so its long side is `imgsz`.

    shapes (n, 2) image (width, height); labels: n arrays (k, 5) of (class, x, y, w, h normalised).
    With `rng`, each image's sizes are also multiplied by a scale drawn uniformly from 0.9-1.1, the augmentation
    YOLOv5 applies before measuring the fit; without it the sizes are left unscaled (what the k-means fits).
    Returns (m, 2) float64, the labels of all images in order.
    """
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    if len(shapes) != len(labels):
        raise ValueError(f"{len(shapes)} image shapes but {len(labels)} label arrays")
    resized = imgsz * shapes / shapes.max(1, keepdims=True)  # (n, 2) long side = imgsz
    if rng is not None:
        resized = resized * rng.uniform(*SCALE_RANGE, size=(len(resized), 1))
    sizes = [np.asarray(image_labels, dtype=np.float64).reshape(-1, 5)[:, 3:5] * size
             for size, image_labels in zip(resized, labels)]
    return np.concatenate(sizes) if sizes else np.zeros((0, 2))


def compute_kmeans(points: np.ndarray, n: int, rng: np.random.Generator, restarts: int = KMEANS_RESTARTS,
                   tolerance: float = KMEANS_TOLERANCE, max_iterations: int = KMEANS_MAX_ITERATIONS) -> np.ndarray:
    """Lloyd's k-means on points (m, d) -> centroids (<= n, d) of the best of `restarts` runs by mean distance.

    Each run starts from n distinct points drawn from `rng`. Centroids left without members are dropped, so fewer
    than n come back when the points have fewer than n distinct values (as scipy.cluster.vq.kmeans behaves).
    """
    if n > len(points):
        raise ValueError(f"k-means needs at least {n} points, got {len(points)}")
    best_centroids, best_distortion = points[:0], math.inf
    for _ in range(restarts):
        centroids = points[rng.choice(len(points), size=n, replace=False)]  # (k, d)
        previous = math.inf
        for _ in range(max_iterations):
            distance = np.sqrt(((points[:, None] - centroids[None]) ** 2).sum(-1))  # (m, k)
            nearest = distance.argmin(1)  # ties go to the first centroid, which leaves duplicates empty
            distortion = float(distance[np.arange(len(points)), nearest].mean())
            counts = np.bincount(nearest, minlength=len(centroids))  # (k,)
            sums = np.stack([np.bincount(nearest, weights=points[:, j], minlength=len(centroids))
                             for j in range(points.shape[1])], 1)  # (k, d)
            members = counts > 0
            centroids = (sums[members] / counts[members, None]).astype(points.dtype)
            if abs(previous - distortion) <= tolerance:
                break
            previous = distortion
        if distortion < best_distortion:
            best_centroids, best_distortion = centroids, distortion
    return best_centroids


def _kmeans_init(wh: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """k-means on whitened sizes wh (m, 2) -> n centroids (n, 2) in pixels, or None where k-means cannot give n."""
    if n > len(wh):
        return None
    sigma = wh.std(0)  # (2,) whitening
    if not (np.isfinite(sigma).all() and (sigma > 0).all()):
        return None
    centroids = compute_kmeans(wh / sigma, n, rng) * sigma
    return centroids if len(centroids) == n else None


def _sort_by_area(anchors: np.ndarray) -> np.ndarray:
    return anchors[np.argsort(anchors.prod(1))]


def _describe_fit(anchors: np.ndarray, label_wh: torch.Tensor, threshold: float, imgsz: int) -> str:
    """The reference's two-line summary of anchors (n, 2) against label_wh (m, 2); threshold is 1 / thr."""
    x, best = compute_ratio_metric(label_wh, torch.tensor(anchors, dtype=torch.float32))
    best_possible_recall = (best > threshold).float().mean()
    anchors_past_threshold = (x > threshold).float().mean() * len(anchors)
    sizes = ", ".join(f"{round(w)},{round(h)}" for w, h in anchors.tolist())
    return (f"{PREFIX}thr={threshold:.2f}: {best_possible_recall:.4f} best possible recall, "
            f"{anchors_past_threshold:.2f} anchors past thr\n"
            f"{PREFIX}n={len(anchors)}, img_size={imgsz}, metric_all={x.mean():.3f}/{best.mean():.3f}-mean/best, "
            f"past_thr={x[x > threshold].mean():.3f}-mean: {sizes}")


def kmean_anchors(label_wh: np.ndarray, n: int = 9, imgsz: int = 640, thr: float = 4.0, generations: int = 1000,
                  rng: np.random.Generator | None = None, verbose: bool = True, progress: bool = True) -> np.ndarray:
    """Anchors fitted to label sizes: k-means on whitened (width, height), then a genetic evolution.

    label_wh (m, 2) pixels, as from `label_sizes` without scaling; thr: the hyp `anchor_t` ratio threshold.
    Fitness is the mean over labels of the best anchor's ratio metric, counting only labels matched within thr.
    `rng` (default: seeded with 0) drives the k-means starts and every mutation. Returns (n, 2) float32 pixels,
    sorted by area, smallest first.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    threshold = 1 / thr
    all_wh = np.asarray(label_wh, dtype=np.float64).reshape(-1, 2)  # (m, 2)

    small = int((all_wh < SMALL_LABEL_SIDE).any(1).sum())
    if small:
        LOGGER.warning(f"{PREFIX}WARNING ⚠️ Extremely small objects found: {small} of {len(all_wh)} labels are "
                       f"<3 pixels in size")
    # yolov5 parity: the warning counts labels with a side under 3 px, but only those with both sides under 2 px
    # are left out of the fit
    wh = all_wh[(all_wh >= KEEP_LABEL_SIDE).any(1)].astype(np.float32)  # (m', 2)

    LOGGER.info(f"{PREFIX}Running kmeans for {n} anchors on {len(wh)} points...")
    anchors = _kmeans_init(wh, n, rng)
    if anchors is None:
        LOGGER.warning(f"{PREFIX}WARNING ⚠️ switching strategies from kmeans to random init")
        anchors = np.sort(rng.random(n * 2)).reshape(n, 2) * imgsz
    anchors = _sort_by_area(anchors)

    fit_wh, all_wh_tensor = torch.from_numpy(wh), torch.tensor(all_wh, dtype=torch.float32)

    def fitness(candidate: np.ndarray) -> float:
        _, best = compute_ratio_metric(fit_wh, torch.tensor(candidate, dtype=torch.float32))
        return float((best * (best > threshold).float()).mean())

    best_fitness = fitness(anchors)
    with Progress(generations, f"{PREFIX}Evolving anchors with Genetic Algorithm", enabled=progress) as bar:
        for _ in range(generations):
            change = np.ones(anchors.shape)
            while (change == 1).all():  # mutate until something changes, so no generation repeats its parent
                perturb = rng.random(anchors.shape) < MUTATION_PROBABILITY
                change = (perturb * rng.random() * rng.standard_normal(anchors.shape) * MUTATION_SIGMA + 1)
                change = change.clip(*MUTATION_CLIP)
            candidate = (anchors * change).clip(min=MIN_ANCHOR_SIDE)
            candidate_fitness = fitness(candidate)
            if candidate_fitness > best_fitness:
                anchors, best_fitness = candidate, candidate_fitness
                if verbose:
                    LOGGER.info(_describe_fit(_sort_by_area(anchors), all_wh_tensor, threshold, imgsz))
            bar.update(1, f"fitness = {best_fitness:.4f}")

    anchors = _sort_by_area(anchors)
    LOGGER.info(_describe_fit(anchors, all_wh_tensor, threshold, imgsz))
    return anchors.astype(np.float32)


def check_anchors(model: nn.Module, dataset: LabelledImages, thr: float = 4.0, imgsz: int = 640,
                  rng: np.random.Generator | None = None, generations: int = 1000,
                  progress: bool = True) -> AnchorCheck:
    """Measure the Detect anchors against the dataset's labels and re-fit them when the best possible recall is
    at most 0.98; re-fitted anchors replace the current ones (in place, in grid units) only if they recall more.

    `rng` (default: seeded with 0) draws the scale augmentation and drives the re-fit. Distributed callers run
    this on one process and broadcast `model.model[-1].anchors`.
    """
    detect = getattr(model, "module", model).model[-1]
    rng = np.random.default_rng(0) if rng is None else rng
    scaled_wh = label_sizes(dataset.shapes, dataset.labels, imgsz, rng)  # (m, 2)
    if not len(scaled_wh):
        LOGGER.warning(f"{PREFIX}WARNING ⚠️ no labels to fit anchors to, keeping the current anchors")
        return AnchorCheck(math.nan, math.nan, None, False)

    stride = detect.stride.to(detect.anchors.device).view(-1, 1, 1)  # (nl, 1, 1)
    current = detect.anchors.detach() * stride  # (nl, na, 2) pixels
    best_possible_recall, anchors_per_label = anchor_metrics(current.view(-1, 2), scaled_wh, thr)
    summary = f"{PREFIX}{anchors_per_label:.2f} anchors/target, {best_possible_recall:.3f} Best Possible Recall (BPR). "
    if best_possible_recall > GOOD_FIT_RECALL:
        LOGGER.info(f"{summary}Current anchors are a good fit to dataset ✅")
        return AnchorCheck(best_possible_recall, anchors_per_label, None, False)

    LOGGER.info(f"{summary}Anchors are a poor fit to dataset ⚠️, attempting to improve...")
    # yolov5 parity: the new anchors are fitted to unscaled label sizes but judged on the scaled ones
    unscaled_wh = label_sizes(dataset.shapes, dataset.labels, imgsz)
    new_anchors = kmean_anchors(unscaled_wh, n=detect.anchors.numel() // 2, imgsz=imgsz, thr=thr,
                                generations=generations, rng=rng, verbose=False, progress=progress)
    new_best_possible_recall, _ = anchor_metrics(new_anchors, scaled_wh, thr)
    replaced = new_best_possible_recall > best_possible_recall
    if replaced:
        with torch.no_grad():
            detect.anchors[:] = torch.from_numpy(new_anchors).to(detect.anchors).view_as(detect.anchors)
            apply_anchor_order(detect)  # compares mean areas per level, so it runs on pixel anchors
            detect.anchors /= stride
        LOGGER.info(f"{PREFIX}Done ✅ (optional: update model *.yaml to use these anchors in the future)")
    else:
        LOGGER.info(f"{PREFIX}Done ⚠️ (original anchors better than new anchors, proceeding with original anchors)")
    return AnchorCheck(best_possible_recall, anchors_per_label, new_best_possible_recall, replaced)
