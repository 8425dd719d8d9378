"""Write a photo-like JPEG detection dataset for the benchmarks (nothing is downloaded).

    python benchmarks/make_dataset.py --out /tmp/coco-like --kind coco --images 200 --val-images 50
    python benchmarks/make_dataset.py --out /tmp/phone --kind phone --images 64 --val-images 16
    python benchmarks/make_dataset.py --out /tmp/clutter --kind clutter --images 400 --val-images 100 --min-size 0.12

`coco`: COCO's common sizes (640x480, 480x640, 500x375, 427x640, 640x427), ~100-150 KB each (COCO's: ~160 KB).
`phone`: 4032x3024 (landscape and portrait), ~4-5 MB each, as a phone camera writes them.
Each image is a smooth random backdrop with striped objects, detail at 1-32 px scales, sensor noise and JPEG
4:2:0 at quality 90, so its entropy (and so its decode time) is close to a real photo's; the objects' boxes
are the labels (80 classes).
`clutter`: 320x240, 240x320 and 320x320 scenes for accuracy benchmarks: 8 learnable classes told apart by shape
alone (disc, box, triangle, cross, star, ring, hexagon, arrow; any colour, texture, rotation, sizes from
`--min-size` to half the image's shorter side, overlapping), among unlabelled distractors (lines, text, irregular
blobs) on the same photo-like backdrop, with lighting, blur and JPEG quality varying per image.
Writes OUT/images/{train,val}, OUT/labels/{train,val} and OUT/data.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SIZES = {"coco": [(640, 480), (480, 640), (500, 375), (427, 640), (640, 427)],
         "phone": [(4032, 3024), (3024, 4032)], "clutter": [(320, 240), (240, 320), (320, 320)]}
CLASSES = 80
SHAPES = ("disc", "box", "triangle", "cross", "star", "ring", "hexagon", "arrow")


def backdrop(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random BGR backdrop."""
    coarse = rng.integers(0, 256, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def with_detail(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Detail at every scale from 1 to 32 pixels (as photos have), plus colour sensor noise."""
    height, width = image.shape[:2]
    detail = np.zeros((height, width), np.float32)
    for step, amplitude in ((1, 8), (2, 8), (4, 12), (8, 16), (32, 24)):
        coarse = rng.normal(0, amplitude, (-(-height // step), -(-width // step))).astype(np.float32)
        detail += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    noisy = image + detail[..., None] + rng.normal(0, 2, (height, width, 3)).astype(np.float32)
    return noisy.clip(0, 255).astype(np.uint8)


def photo(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[list[float]]]:
    """A BGR image and its labels [class, x, y, w, h] (normalised)."""
    image = backdrop(rng, width, height)
    labels = []
    for _ in range(int(rng.integers(2, 9))):
        w, h = (int(rng.uniform(0.05, 0.45) * width), int(rng.uniform(0.05, 0.45) * height))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(3)
        if shape == 0:
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, -1, cv2.LINE_AA)
        elif shape == 1:
            cv2.ellipse(image, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, colour, -1, cv2.LINE_AA)
        else:
            points = np.array([[x + w // 2, y], [x + w, y + h], [x, y + h]], np.int32)
            cv2.fillPoly(image, [points], colour, cv2.LINE_AA)
        # texture inside the object: stripes of a random period
        period = max(2, int(rng.integers(3, 12) * width / 640))
        stripes = (np.arange(w) // period % 2 * 40 - 20).astype(np.int16)
        patch = image[y:y + h, x:x + w].astype(np.int16) + stripes[None, :, None]
        image[y:y + h, x:x + w] = patch.clip(0, 255).astype(np.uint8)
        labels.append([int(rng.integers(CLASSES)), (x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
    return with_detail(rng, image), labels


def outline(shape: str, rng: np.random.Generator) -> np.ndarray:
    """The shape's outline as (N, 2) points in a unit box centred at 0 (before rotation)."""
    turn = np.linspace(0, 2 * np.pi, 41)[:-1]
    if shape in ("disc", "ring"):
        aspect = rng.uniform(0.7, 1.0)
        return np.stack((np.cos(turn) / 2, np.sin(turn) * aspect / 2), 1)
    if shape == "box":
        aspect = rng.uniform(0.4, 1.0)
        return np.array([[-0.5, -aspect / 2], [0.5, -aspect / 2], [0.5, aspect / 2], [-0.5, aspect / 2]])
    if shape == "triangle":
        return np.array([[0, -0.5], [0.5, 0.43], [-0.5, 0.43]])
    if shape == "cross":
        a = rng.uniform(0.12, 0.2)
        return np.array([[-a, -0.5], [a, -0.5], [a, -a], [0.5, -a], [0.5, a], [a, a], [a, 0.5], [-a, 0.5],
                         [-a, a], [-0.5, a], [-0.5, -a], [-a, -a]])
    if shape == "star":
        angles = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, 0.5, rng.uniform(0.18, 0.25))
        return np.stack((np.cos(angles) * radius, np.sin(angles) * radius), 1)
    if shape == "hexagon":
        angles = np.linspace(0, 2 * np.pi, 7)[:-1]
        return np.stack((np.cos(angles) / 2, np.sin(angles) / 2), 1)
    if shape == "arrow":
        return np.array([[-0.5, -0.12], [0.1, -0.12], [0.1, -0.3], [0.5, 0], [0.1, 0.3], [0.1, 0.12], [-0.5, 0.12]])
    # an irregular blob (a distractor)
    radius = rng.uniform(0.2, 0.5, len(turn) // 4)
    return np.stack((np.cos(turn[::4]) * radius, np.sin(turn[::4]) * radius), 1)


def paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Fill `mask` (uint8 0/255) in `image` with a random colour, texture and shading, edges anti-aliased."""
    height, width = mask.shape
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(3, 14)
    texture = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) * rng.uniform(0, 40)
    shading = (xx / width - 0.5) * rng.uniform(-60, 60) + (yy / height - 0.5) * rng.uniform(-60, 60)
    fill = colour[None, None] + (texture + shading)[..., None]
    alpha = cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32)[..., None] / 255
    image[:] = image * (1 - alpha) + fill * alpha


def scene(rng: np.random.Generator, width: int, height: int,
          min_size: float = 0.04) -> tuple[np.ndarray, list[list[float]]]:
    """A cluttered BGR scene and its labels [class, x, y, w, h] (normalised): shapes of SHAPES among distractors,
    sized log-uniformly from `min_size` to 0.5 of the shorter side."""
    image = backdrop(rng, width, height).astype(np.float32)
    labels = []
    side = min(width, height)
    items = ["distractor"] * int(rng.integers(2, 7)) + [str(s) for s in rng.choice(SHAPES, int(rng.integers(2, 9)))]
    for item in rng.permutation(items):
        mask = np.zeros((height, width), np.uint8)
        if item == "distractor" and rng.random() < 0.5:  # a line or text
            colour = 255
            if rng.random() < 0.5:
                points = rng.integers(0, (width, height), (2, 2))
                cv2.line(mask, tuple(int(v) for v in points[0]), tuple(int(v) for v in points[1]), colour,
                         int(rng.integers(1, 6)), cv2.LINE_AA)
            else:
                text = "".join(rng.choice(list("ABCDEFGHKMNPRSTXYZ0123456789"), int(rng.integers(2, 7))))
                cv2.putText(mask, text, (int(rng.integers(0, width // 2)), int(rng.integers(20, height))),
                            cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.5, 1.6), colour, int(rng.integers(1, 4)),
                            cv2.LINE_AA)
            paint(rng, image, mask)
            continue
        size = side * float(np.exp(rng.uniform(np.log(min_size), np.log(0.5))))
        angle = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        centre = rng.uniform((0, 0), (width, height))
        points = outline("blob" if item == "distractor" else item, rng) @ rotation.T * size + centre
        cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        if item == "ring":  # the hole
            cv2.fillPoly(mask, [np.round((points - centre) * rng.uniform(0.45, 0.65) * 16 + centre * 16).astype(
                np.int32)], 0, cv2.LINE_AA, shift=4)
        ys, xs = np.nonzero(mask > 127)
        if len(xs) < 12:  # off the image or too small to see
            continue
        paint(rng, image, mask)
        if item != "distractor":
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            labels.append([SHAPES.index(item), (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width,
                           (y1 - y0) / height])
    image = image * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30)  # exposure
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    return with_detail(rng, image), labels


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--kind", choices=sorted(SIZES), default="coco")
    parser.add_argument("--images", type=int, default=200, help="training images")
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=float, default=0.04,
                        help="clutter: smallest shape as a fraction of the shorter side (the largest is 0.5)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.images), ("val", args.val_images)):
        images, labels = args.out / "images" / split, args.out / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            width, height = SIZES[args.kind][i % len(SIZES[args.kind])]
            if args.kind == "clutter":
                image, rows = scene(rng, width, height, args.min_size)
            else:
                image, rows = photo(rng, width, height)
            quality = int(rng.integers(70, 96)) if args.kind == "clutter" else 90
            cv2.imwrite(str(images / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            rows = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows)
            (labels / f"{i:06d}.txt").write_text(rows)
    classes = SHAPES if args.kind == "clutter" else [f"class{i}" for i in range(CLASSES)]
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(classes))
    yaml = args.out / "data.yaml"
    yaml.write_text(f"path: {args.out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    print(yaml)
    return yaml


if __name__ == "__main__":
    main()
