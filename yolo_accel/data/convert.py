"""COCO-JSON and Pascal VOC annotations -> a YOLO dataset (labels/<split>/*.txt, images linked, data.yaml).

A one-time conversion rather than reading those formats at every scan: the result is the layout every YOLOv5 user
and tool knows, the scan, cache and verification stay one code path, and the source files are never touched.
COCO category ids become contiguous classes in id order with their names kept; crowd boxes (iscrowd) are skipped,
as YOLOv5's COCO tooling does. VOC objects marked difficult are skipped, as YOLOv5's VOC.yaml does.
"""

from __future__ import annotations

import json
import logging
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import yaml

from .sources import DataError

LOGGER = logging.getLogger("yolo_accel")


def yolo_row(cls: int, x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> str | None:
    """`class x y w h` normalised, the box clipped to the image; None for a box with no area left."""
    x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
    y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
    if x2 <= x1 or y2 <= y1:
        return None
    return (f"{cls} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} {(x2 - x1) / width:.6f} "
            f"{(y2 - y1) / height:.6f}")


def link_image(source: Path, target: Path) -> None:
    """`target` -> `source` as a symlink (a copy where links are not allowed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, target)


def write_split(out: Path, split: str, images: dict[str, Path], rows: dict[str, list[str]]) -> tuple[int, int]:
    """Link each image into out/images/split and write its label file (empty for backgrounds); (images, boxes)."""
    boxes = 0
    for name, source in images.items():
        link_image(source, out / "images" / split / name)
        label = (out / "labels" / split / name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{r}\n" for r in rows.get(name, [])))
        boxes += len(rows.get(name, []))
    return len(images), boxes


def write_data_yaml(out: Path, split: str, names: list[str]) -> Path:
    """data.yaml for the converted split (train and val both point at it; edit to add others)."""
    path = out / "data.yaml"
    data: dict[str, Any] = yaml.safe_load(path.read_text()) if path.is_file() else {}
    if data.get("names") not in (None, dict(enumerate(names))):
        raise DataError(f"{path}: already lists other class names; convert into another folder")
    data = {"path": str(out.resolve()), "train": data.get("train", f"images/{split}"),
            "val": f"images/{split}" if split != "train" else data.get("val", f"images/{split}"),
            "names": dict(enumerate(names))}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def convert_coco(annotations: Path, images_dir: Path, out: Path, split: str = "train") -> Path:
    """A COCO instances JSON (e.g. instances_val2017.json) and its image folder -> YOLO labels under `out`;
    returns out/data.yaml."""
    try:
        coco = json.loads(Path(annotations).read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        class_of = {c["id"]: i for i, c in enumerate(categories)}
        files = {image["id"]: image for image in coco["images"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{annotations}: not a COCO instances file ({err!r})") from None
    rows: dict[str, list[str]] = {}
    crowd = 0
    for ann in coco.get("annotations", []):
        image = files.get(ann.get("image_id"))
        if image is None or ann.get("category_id") not in class_of:
            continue
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        x, y, w, h = ann["bbox"]
        row = yolo_row(class_of[ann["category_id"]], x, y, x + w, y + h, image["width"], image["height"])
        if row:
            rows.setdefault(image["file_name"], []).append(row)
    images = {image["file_name"]: Path(images_dir) / image["file_name"] for image in files.values()}
    missing = [name for name, path in images.items() if not path.is_file()]
    if missing:
        LOGGER.warning(f"WARNING ⚠️ {len(missing)} images of {annotations} are not in {images_dir} "
                       f"(e.g. {missing[0]}); left out")
        images = {name: path for name, path in images.items() if name not in missing}
    count, boxes = write_split(out, split, images, rows)
    LOGGER.info(f"{annotations}: {count} images, {boxes} boxes, {len(categories)} classes, {crowd} crowd boxes "
                f"skipped -> {out}")
    return write_data_yaml(out, split, [c["name"] for c in categories])


def convert_voc(annotations_dir: Path, images_dir: Path, out: Path, split: str = "train",
                names: list[str] | None = None) -> Path:
    """A Pascal VOC Annotations folder (one XML per image) and its JPEGImages folder -> YOLO labels under `out`;
    classes are `names` in that order, or every name found, sorted. Returns out/data.yaml."""
    parsed = []
    for xml_file in sorted(Path(annotations_dir).glob("*.xml")):
        try:
            root = ElementTree.parse(xml_file).getroot()
            size = root.find("size")
            width, height = float(size.findtext("width")), float(size.findtext("height"))
            objects = []
            for obj in root.iter("object"):
                if int(obj.findtext("difficult") or 0):
                    continue
                box = obj.find("bndbox")
                coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                objects.append((obj.findtext("name").strip(), coords))
        except (ElementTree.ParseError, AttributeError, TypeError, ValueError) as err:
            LOGGER.warning(f"WARNING ⚠️ {xml_file}: skipped, not a VOC annotation ({err!r})")
            continue
        parsed.append((root.findtext("filename") or f"{xml_file.stem}.jpg", width, height, objects))
    if not parsed:
        raise DataError(f"{annotations_dir}: no VOC annotation files (*.xml)")
    names = names or sorted({name for *_, objects in parsed for name, _ in objects})
    class_of = {name: i for i, name in enumerate(names)}
    rows: dict[str, list[str]] = {}
    images: dict[str, Path] = {}
    for filename, width, height, objects in parsed:
        source = Path(images_dir) / filename
        if not source.is_file():
            LOGGER.warning(f"WARNING ⚠️ {source}: not found; its annotation is left out")
            continue
        images[filename] = source
        for name, (x1, y1, x2, y2) in objects:
            if name in class_of:  # VOC pixel indices start at 1: corners x1 - 1 .. x2 cover the box's pixels
                row = yolo_row(class_of[name], x1 - 1, y1 - 1, x2, y2, width, height)
                if row:
                    rows.setdefault(filename, []).append(row)
    count, boxes = write_split(out, split, images, rows)
    LOGGER.info(f"{annotations_dir}: {count} images, {boxes} boxes, {len(names)} classes -> {out}")
    return write_data_yaml(out, split, names)

