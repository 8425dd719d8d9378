from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from yolo_accel import files
from yolo_accel.data import demo
from yolo_accel.data.demo import CLASS_NAMES, demo_dataset, render_split, write_demo_dataset

TINY = {"train_images": 24, "val_images": 8, "imgsz": 64, "seed": 3}


def read_labels(path: Path) -> np.ndarray:
    """(N, 5) rows of class, xc, yc, w, h as written."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def label_boxes_xyxy(labels: np.ndarray, imgsz: int) -> np.ndarray:
    centre, size = labels[:, 1:3] * imgsz, labels[:, 3:5] * imgsz
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "tiny"
    write_demo_dataset(root, **TINY)
    return root


def test_generation_is_deterministic(tiny_root, tmp_path):
    again = tmp_path / "again"
    write_demo_dataset(again, **TINY)
    for split in ("train", "val"):
        labels = sorted((tiny_root / "labels" / split).glob("*.txt"))
        assert [path.name for path in labels] == [path.name for path in sorted((again / "labels" / split).iterdir())]
        for path in labels:
            assert path.read_bytes() == (again / "labels" / split / path.name).read_bytes()
        for path in sorted((tiny_root / "images" / split).iterdir()):
            assert np.array_equal(read_image(path), read_image(again / "images" / split / path.name))

    other_seed = render_split("train", 4, imgsz=64, seed=TINY["seed"] + 1)
    same_seed = render_split("train", 4, imgsz=64, seed=TINY["seed"])
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(other_seed, same_seed))


def test_layout_and_data_yaml(tiny_root):
    data = yaml.safe_load((tiny_root / "data.yaml").read_text())
    assert data == {
        "path": str(tiny_root.absolute()),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
    }
    assert Path(data["path"]).is_absolute()
    for split, count in (("train", TINY["train_images"]), ("val", TINY["val_images"])):
        images = sorted((tiny_root / data[split]).iterdir())
        labels = sorted((tiny_root / "labels" / split).iterdir())
        assert len(images) == len(labels) == count
        assert [path.stem for path in images] == [path.stem for path in labels]
        for image_path, label_path in zip(images, labels):
            assert read_image(image_path).shape == (TINY["imgsz"], TINY["imgsz"], 3)
            for line in label_path.read_text().splitlines():
                class_id, *coordinates = line.split(" ")
                assert class_id.isdigit() and int(class_id) < len(CLASS_NAMES)
                assert all(len(value.split(".")[1]) == 6 for value in coordinates)
            labels_array = read_labels(label_path)
            boxes = label_boxes_xyxy(labels_array, 1)
            assert np.all(labels_array[:, 3:] > 0)
            assert np.all(boxes >= -1e-6) and np.all(boxes <= 1 + 1e-6)


def test_train_and_val_differ(tiny_root):
    train = read_image(tiny_root / "images" / "train" / "00001.png")
    val = read_image(tiny_root / "images" / "val" / "00001.png")
    assert not np.array_equal(train, val)


def test_boxes_are_tight_around_drawn_pixels(tiny_root):
    imgsz = TINY["imgsz"]
    samples = render_split("train", TINY["train_images"], imgsz=imgsz, seed=TINY["seed"])
    checked_objects = 0
    for index, sample in enumerate(samples):
        image = read_image(tiny_root / "images" / "train" / f"{index:05d}.png")
        assert np.array_equal(image, sample.image), "render_split must reproduce the written image"
        boxes = label_boxes_xyxy(read_labels(tiny_root / "labels" / "train" / f"{index:05d}.txt"), imgsz)
        assert len(boxes) == len(sample.masks)

        # every pixel that differs from the background belongs to some labelled box
        rows, columns = np.nonzero(np.any(image != sample.background, axis=-1))
        in_some_box = np.zeros(rows.shape, dtype=bool)
        for x1, y1, x2, y2 in boxes:
            inside = (columns >= x1 - 0.01) & (columns + 1 <= x2 + 0.01) & (rows >= y1 - 0.01) & (rows + 1 <= y2 + 0.01)
            in_some_box |= inside
        assert in_some_box.all(), f"image {index}: drawn pixels outside every box"

        # each shape's visible pixels lie inside its own box and reach all four edges
        covered_later = np.zeros((imgsz, imgsz), dtype=bool)
        for mask, (x1, y1, x2, y2) in reversed(list(zip(sample.masks, boxes))):
            visible = mask & ~covered_later
            covered_later |= mask
            assert visible.sum() >= demo.MIN_VISIBLE_FRACTION * mask.sum()
            assert np.mean(np.any(image[visible] != sample.background[visible], axis=-1)) > 0.95
            rows, columns = np.nonzero(visible)
            assert columns.min() >= x1 - 0.01 and columns.max() + 1 <= x2 + 0.01
            assert rows.min() >= y1 - 0.01 and rows.max() + 1 <= y2 + 0.01
            assert columns.min() - x1 <= 1 and x2 - (columns.max() + 1) <= 1
            assert rows.min() - y1 <= 1 and y2 - (rows.max() + 1) <= 1
            checked_objects += 1
    assert checked_objects > 2 * len(samples)


def test_classes_sizes_and_background_images():
    imgsz, count = 128, 200
    samples = render_split("train", count, imgsz=imgsz, seed=0)
    objects_per_image = np.array([len(sample.classes) for sample in samples])
    assert objects_per_image.max() <= 6
    background_images = np.sum(objects_per_image == 0)
    assert 0.03 * count <= background_images <= 0.08 * count
    assert np.mean(objects_per_image[objects_per_image > 0]) > 2.5  # several objects per image, not just one

    class_counts = np.bincount(np.concatenate([sample.classes for sample in samples]), minlength=len(CLASS_NAMES))
    assert class_counts.min() >= 0.85 * class_counts.mean() and class_counts.max() <= 1.15 * class_counts.mean()

    boxes = np.concatenate([sample.boxes_xyxy for sample in samples])
    longest_side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / imgsz
    assert longest_side.min() >= 0.15 and longest_side.max() <= 0.7
    assert np.mean(longest_side < 0.25) > 0.1 and np.mean(longest_side > 0.4) > 0.1


def circular_mean_hue(pixels: np.ndarray) -> float:
    """Mean hue in degrees of (N, 3) uint8 RGB pixels, averaged on the circle."""
    rgb = pixels.astype(np.float64) / 255
    high, low = rgb.max(-1), rgb.min(-1)
    spread = high - low + 1e-9
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    sector = np.where(high == red, ((green - blue) / spread) % 6,
                      np.where(high == green, (blue - red) / spread + 2, (red - green) / spread + 4))
    return float(np.degrees(np.angle(np.mean(np.exp(1j * np.radians(sector * 60))))))


def test_each_class_leans_towards_its_hue_but_not_always():
    samples = render_split("train", 100, imgsz=128, seed=0)
    distances = {class_id: [] for class_id in range(len(CLASS_NAMES))}
    for sample in samples:
        covered_later = np.zeros(sample.image.shape[:2], dtype=bool)
        for class_id, mask in reversed(list(zip(sample.classes, sample.masks))):
            visible = mask & ~covered_later
            covered_later |= mask
            hue = circular_mean_hue(sample.image[visible])
            distances[class_id].append(abs((hue - demo.CLASS_HUES[class_id] + 180) % 360 - 180))
    for class_id, class_distances in distances.items():
        near = np.mean(np.array(class_distances) < 25)
        assert near > 0.85, f"{CLASS_NAMES[class_id]}: only {near:.0%} of shapes near the class hue"
    everything = np.concatenate([np.array(d) for d in distances.values()])
    assert np.mean(everything >= 25) > 0.01, "some shapes must be off-hue, so the outline still matters"


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(demo.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert files.cache_dir() == tmp_path / "home" / ".cache" / "yolo-accel"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.cache_dir() == tmp_path / "xdg" / "yolo-accel"
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path / "mine"))
    assert files.cache_dir() == tmp_path / "mine"


def call_demo_dataset(barrier, results) -> None:
    barrier.wait()  # start together so both find the cache empty and race to rename
    results.put(str(demo_dataset()))


@pytest.mark.slow
def test_concurrent_callers_share_one_complete_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path))
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=call_demo_dataset, args=(barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    root = tmp_path / f"demo-v{demo.DEMO_VERSION}"
    assert [results.get(timeout=5) for _ in workers] == [str(root / "data.yaml")] * 2

    assert sorted(path.name for path in tmp_path.iterdir()) == [root.name], "staging folders must be cleaned up"
    assert yaml.safe_load((root / "data.yaml").read_text())["path"] == str(root)
    for split, count in (("train", 400), ("val", 100)):
        assert len(list((root / "images" / split).iterdir())) == count
        assert len(list((root / "labels" / split).iterdir())) == count

    modified = (root / "data.yaml").stat().st_mtime_ns
    assert demo_dataset() == root / "data.yaml"
    assert (root / "data.yaml").stat().st_mtime_ns == modified, "a complete dataset is reused, not rewritten"


def test_losing_the_rename_race_uses_the_winner(monkeypatch, tmp_path):
    root = tmp_path / "demo"
    write = demo._write_dataset
    calls = []

    def write_then_let_a_rival_finish_first(staging: Path, final_root: Path) -> Path:
        calls.append(staging)
        data_yaml = write(staging, final_root, train_images=3, val_images=2, imgsz=32)
        if len(calls) == 1:
            demo_dataset(root)  # a rival process generates and renames into place before we do
        else:
            (staging / "winner").touch()
        return data_yaml

    monkeypatch.setattr(demo, "_write_dataset", write_then_let_a_rival_finish_first)
    assert demo_dataset(root) == root / "data.yaml"
    assert len(calls) == 2
    assert (root / "winner").exists()
    assert not calls[0].exists() and not calls[1].exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo"]


def test_interrupted_generation_leaves_nothing_that_looks_complete(monkeypatch, tmp_path):
    root = tmp_path / "demo"

    def write_half_then_fail(staging: Path, final_root: Path) -> Path:
        (staging / "images" / "train").mkdir(parents=True)
        raise OSError("disk full")

    monkeypatch.setattr(demo, "_write_dataset", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        demo_dataset(root)
    assert list(tmp_path.iterdir()) == []

    (root / "images" / "train").mkdir(parents=True)  # e.g. a folder copied by hand, without data.yaml
    with pytest.raises(RuntimeError, match=r"no data\.yaml"):
        demo_dataset(root)


def test_unwritable_cache_names_the_folder_and_the_variable(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(demo.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(RuntimeError, match=demo.CACHE_ENV) as raised:
        demo_dataset()
    assert str(blocker / "cache") in str(raised.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_cache_names_the_folder_and_the_variable(monkeypatch, tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    monkeypatch.setenv(demo.CACHE_ENV, str(read_only))
    try:
        with pytest.raises(RuntimeError, match=demo.CACHE_ENV) as raised:
            demo_dataset()
        assert str(read_only) in str(raised.value)
    finally:
        read_only.chmod(0o700)
