from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolo_accel.draw import class_colour
from yolo_accel.metrics import ConfusionMatrix, ap_per_class
from yolo_accel.plots import (
    gaussian_smooth,
    plot_confusion_matrix,
    plot_curves,
    plot_images,
    plot_labels,
    plot_metric_curves,
    plot_pr_curve,
    plot_results,
)
from yolo_accel.results import RESULT_COLUMNS, append_results

NAMES = ["person", "bicycle", "car"]


def open_image(path: Path, min_size: tuple[int, int], max_size: tuple[int, int] = (4000, 4000)) -> Image.Image:
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.load()
    assert min_size[0] <= image.width <= max_size[0] and min_size[1] <= image.height <= max_size[1], image.size
    return image


def not_blank(image: Image.Image) -> bool:
    pixels = np.asarray(image.convert("L"))
    return pixels.min() < pixels.max()


def colour_pixels(image: Image.Image | np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels are within `tolerance` (per channel) of `rgb`."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(int)
    return int((np.abs(pixels - np.array(rgb)).max(-1) <= tolerance).sum())


def test_gaussian_smooth_keeps_length_and_constants():
    assert np.allclose(gaussian_smooth(np.full(5, 2.0)), 2.0)
    ramp = np.arange(40, dtype=float)
    smoothed = gaussian_smooth(ramp)
    assert smoothed.shape == ramp.shape
    assert np.allclose(smoothed[15:25], ramp[15:25])  # a line is unchanged away from the edges
    assert gaussian_smooth(np.zeros(0)).shape == (0,)


@pytest.mark.parametrize("epochs", [1, 6])
def test_plot_results(tmp_path, epochs):
    csv = tmp_path / "results.csv"
    for epoch in range(epochs):
        append_results(csv, epoch, [1.0 / (epoch + 1 + i) for i in range(len(RESULT_COLUMNS))])
    path = plot_results(csv)
    assert path == tmp_path / "results.png"
    pixels = np.asarray(open_image(path, (2000, 1000), (2600, 1300)).convert("RGB"))
    height, width = pixels.shape[:2]
    for row in range(2):  # every one of the ten panels holds the results line (matplotlib's first colour)
        for column in range(5):
            panel = pixels[row * height // 2:(row + 1) * height // 2, column * width // 5:(column + 1) * width // 5]
            assert colour_pixels(panel, (31, 119, 180)) > 20, (row, column)


@pytest.mark.parametrize("case", ["three_classes", "one_class", "no_labels"])
def test_plot_labels(tmp_path, case):
    generator = np.random.default_rng(0)
    if case == "no_labels":
        labels, names = [np.zeros((0, 5)), np.zeros((0, 5))], NAMES
    else:
        nc = 1 if case == "one_class" else 3
        labels = [np.column_stack((generator.integers(0, nc, k), generator.uniform(0.2, 0.8, (k, 2)),
                                   generator.uniform(0.05, 0.3, (k, 2)))) for k in (4, 0, 7)]
        names = NAMES[:nc]
    path = plot_labels(labels, names, tmp_path)
    assert path == tmp_path / "labels.jpg"
    assert not_blank(open_image(path, (1400, 1400), (1700, 1700)))


def synthetic_batch(batch: int = 3, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def test_plot_images_draws_labels(tmp_path):
    images = synthetic_batch()
    # image 1 has no targets; a box at a tile edge keeps its tag inside the tile
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.4, 0.4], [0, 2, 0.1, 0.1, 0.2, 0.2], [2, 1, 0.7, 0.6, 0.3, 0.5]])
    path = plot_images(images, targets, [f"img{i}.jpg" for i in range(3)], tmp_path / "train_batch0.jpg", NAMES)
    image = open_image(path, (128, 128), (128, 128))  # 2 x 2 tiles of 64 px
    pixels = np.asarray(image).astype(int)
    person = np.array(Image.new("RGB", (1, 1), class_colour(0)))[0, 0]
    assert (np.abs(pixels - person).sum(-1) < 60).any()  # class 0 drawn in its colour
    assert pixels[72:, 72:].mean() > 250  # the fourth tile is empty (white, up to jpeg noise)


def test_plot_images_predictions_hide_low_confidence(tmp_path):
    images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    low = torch.tensor([[0, 1, 32, 32, 20, 20, 0.2]])  # pixel boxes, as from a detector
    high = torch.tensor([[0, 1, 32, 32, 20, 20, 0.9]])
    quiet = np.asarray(Image.open(plot_images(images, low, None, tmp_path / "low.jpg", NAMES)))
    drawn = np.asarray(Image.open(plot_images(images, high, None, tmp_path / "high.jpg", NAMES)))
    assert quiet[4:60, 4:60].max() < 40  # nothing above the noise of the jpeg
    assert drawn.max() > 150


def test_plot_images_edge_cases(tmp_path):
    path = plot_images(synthetic_batch(1), torch.zeros(0, 6), None, tmp_path / "empty.jpg", NAMES)
    open_image(path, (64, 64), (64, 64))
    images = synthetic_batch(20, 640)  # capped at max_subplots and shrunk to max_size
    targets = torch.tensor([[i, i % 3, 0.5, 0.5, 0.5, 0.5] for i in range(20)])
    path = plot_images(images.float() / 255, targets, None, tmp_path / "big.jpg", NAMES, max_subplots=16)
    open_image(path, (1900, 1900), (1920, 1920))


def detection_details():
    generator = np.random.default_rng(0)
    n = 60
    conf = generator.uniform(0, 1, n)
    pred_cls = generator.integers(0, 3, n)
    tp = generator.uniform(0, 1, (n, 10)) < conf[:, None]  # confident predictions are mostly right
    target_cls = generator.integers(0, 3, 40)
    return ap_per_class(tp, conf, pred_cls, target_cls)


def test_plot_metric_curves(tmp_path):
    details = detection_details()
    paths = plot_metric_curves(details, NAMES, tmp_path)
    assert [p.name for p in paths] == ["PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"]
    for path in paths:
        image = open_image(path, (2000, 1400), (2300, 1600))
        assert colour_pixels(image, (0, 0, 255), tolerance=10) > 500  # the thick all-classes line
        for cls in details.classes:  # a line per class in its colour
            assert colour_pixels(image, class_colour(int(cls)), tolerance=25) > 100, (path.name, cls)


def test_plot_curves_many_and_no_classes(tmp_path):
    x = np.linspace(0, 1, 1000)
    curves = np.stack([np.clip(1 - x * (1 + i / 30), 0, 1) for i in range(30)])
    names = [f"c{i}" for i in range(30)]
    open_image(plot_curves(x, curves, names, range(30), "F1", tmp_path / "F1_curve.png"), (2000, 1400))
    open_image(plot_pr_curve(x, curves, np.linspace(0, 1, 30), names, range(30), tmp_path / "PR_curve.png"),
               (2000, 1400))
    open_image(plot_curves(x, np.zeros((0, 1000)), names, [], "Recall", tmp_path / "R_curve.png"), (2000, 1400))
    open_image(plot_pr_curve(x, np.zeros((0, 1000)), np.zeros(0), names, [], tmp_path / "empty_pr.png"), (2000, 1400))


@pytest.mark.parametrize("nc", [1, 3, 40])
def test_plot_confusion_matrix(tmp_path, nc):
    matrix = ConfusionMatrix(nc)
    labels = torch.tensor([[c % nc, 10, 10, 30, 30] for c in range(4)], dtype=torch.float32)
    detections = torch.tensor([[10, 10, 30, 30, 0.9, (c + 1) % nc] for c in range(3)], dtype=torch.float32)
    matrix.process_batch(detections, labels)
    assert matrix.matrix.sum() > 0
    names = [f"class{i}" for i in range(nc)]
    path = plot_confusion_matrix(matrix.matrix, names, tmp_path / "confusion_matrix.png")
    image = open_image(path, (2800, 2100), (3100, 2300))
    assert colour_pixels(image, (8, 48, 107), tolerance=30) > 1000  # a full cell: the darkest blue of "Blues"
