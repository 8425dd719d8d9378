"""Write a photo-like JPEG detection dataset for the benchmarks (nothing is downloaded).

    python benchmarks/make_dataset.py --out /tmp/coco-like --kind coco --images 200 --val-images 50
    python benchmarks/make_dataset.py --out /tmp/phone --kind phone --images 64 --val-images 16

`coco`: COCO's common sizes (640x480, 480x640, 500x375, 427x640, 640x427), ~100-150 KB each (COCO's: ~160 KB).
`phone`: 4032x3024 (landscape and portrait), ~4-5 MB each, as a phone camera writes them.
Each image is a smooth random backdrop with striped objects, detail at 1-32 px scales, sensor noise and JPEG
4:2:0 at quality 90, so its entropy (and so its decode time) is close to a real photo's; the objects' boxes
are the labels (80 classes).
Writes OUT/images/{train,val}, OUT/labels/{train,val} and OUT/data.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SIZES = {"coco": [(640, 480), (480, 640), (500, 375), (427, 640), (640, 427)],
         "phone": [(4032, 3024), (3024, 4032)]}
CLASSES = 80


def photo(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[list[float]]]:
    """A BGR image and its labels [class, x, y, w, h] (normalised)."""
    coarse = rng.integers(0, 256, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
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
    # detail at every scale from 1 to 32 pixels (as photos have), plus colour sensor noise
    detail = np.zeros((height, width), np.float32)
    for step, amplitude in ((1, 8), (2, 8), (4, 12), (8, 16), (32, 24)):
        coarse = rng.normal(0, amplitude, (-(-height // step), -(-width // step))).astype(np.float32)
        detail += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    noisy = image + detail[..., None] + rng.normal(0, 2, (height, width, 3)).astype(np.float32)
    return noisy.clip(0, 255).astype(np.uint8), labels


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--kind", choices=sorted(SIZES), default="coco")
    parser.add_argument("--images", type=int, default=200, help="training images")
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.images), ("val", args.val_images)):
        images, labels = args.out / "images" / split, args.out / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            width, height = SIZES[args.kind][i % len(SIZES[args.kind])]
            image, rows = photo(rng, width, height)
            cv2.imwrite(str(images / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            rows = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows)
            (labels / f"{i:06d}.txt").write_text(rows)
    names = "\n".join(f"  {i}: class{i}" for i in range(CLASSES))
    yaml = args.out / "data.yaml"
    yaml.write_text(f"path: {args.out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    print(yaml)
    return yaml


if __name__ == "__main__":
    main()
