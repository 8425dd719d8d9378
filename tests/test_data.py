"""Dataset yaml forms, scanning and verification, the label cache, loading, and determinism."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, generic_warp
from PIL import Image

from yolo_accel.boxes import xywhn_to_xyxy
from yolo_accel.config import AugmentHyp, ConfigError, hyp_slice
from yolo_accel.data.augment import aligned_matrix, perspective_matrix, random_perspective
from yolo_accel.data.dataset import YoloDataset, check_labels
from yolo_accel.data.images import read_image, reduction_for
from yolo_accel.data.labels import CACHE_VERSION, scan_labels
from yolo_accel.data.sources import DataError, label_path, list_images, load_data_config

HYP_VALUES = yaml.safe_load((ROOT / "configs/hyps/hyp.scratch-low.yaml").read_text())
HYP = hyp_slice(AugmentHyp, HYP_VALUES)


def write_image(path, size=(64, 48), color=(20, 20, 20), boxes=(), fmt=None):
    """An image with white rectangles; returns YOLO label rows for them (class 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[:] = color
    rows = []
    for x1, y1, x2, y2 in boxes:
        image[y1:y2, x1:x2] = 255
        w, h = size
        rows.append(f"0 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    Image.fromarray(image).save(path, format=fmt)
    return rows


def make_split(root, split, count=4, size=(64, 48), boxes=((8, 8, 30, 30), (34, 10, 60, 40))):
    for i in range(count):
        rows = write_image(root / "images" / split / f"{i}.png", size=size, boxes=boxes)
        label = root / "labels" / split / f"{i}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(rows) + "\n")


def write_yaml(yaml_file, **data):
    yaml_file.write_text(yaml.safe_dump(data))
    return yaml_file


def snapshot(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset_root(tmp_path):
    root = tmp_path / "ds"
    make_split(root, "train")
    make_split(root, "val", count=2)
    return root


# yaml forms


def test_folder_form_with_relative_path(dataset_root):
    cfg = load_data_config(write_yaml(dataset_root.parent / "d.yaml", path="ds", train="images/train",
                                      val="images/val", names=["box"]))
    assert cfg.root == dataset_root and cfg.nc == 1
    assert [p.name for p in list_images(cfg, "train")] == ["0.png", "1.png", "2.png", "3.png"]


def test_list_of_folders_and_dict_names(dataset_root):
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", path=str(dataset_root),
                                      train=["images/train", "images/val"], val="images/val",
                                      names={0: "box", 1: "other"}))
    assert len(list_images(cfg, "train")) == 6 and cfg.names == ["box", "other"]


def test_txt_list_form(dataset_root):
    (dataset_root / "train.txt").write_text("./images/train/0.png\nimages/train/1.png\n")
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="train.txt", val="images/val", names=["box"]))
    assert [p.name for p in list_images(cfg, "train")] == ["0.png", "1.png"]


def test_glob_form(dataset_root):
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train/[12].png", val="images/val",
                                      names=["box"]))
    assert [p.name for p in list_images(cfg, "train")] == ["1.png", "2.png"]


def test_path_defaults_to_the_yaml_folder(dataset_root):
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", val="images/val", nc=1,
                                      names=["box"]))
    assert cfg.root == dataset_root


def test_nc_must_match_names(dataset_root):
    with pytest.raises(ConfigError, match="nc=3 but 1 names"):
        load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", nc=3, names=["box"]))


def test_missing_data_names_the_download_url(tmp_path):
    cfg = load_data_config(write_yaml(tmp_path / "d.yaml", path="nowhere", train="images/train", val="images/val",
                                      names=["a"], download="https://example.com/data.zip"))
    with pytest.raises(DataError, match=r"train data not found at .*nowhere/images/train.*https://example\.com"):
        list_images(cfg, "train")


def test_shipped_coco128_without_data_says_where_to_get_it():
    cfg = load_data_config("coco128")
    assert cfg.nc == 80 and cfg.names[0] == "person" and cfg.names[79] == "toothbrush"
    if not cfg.splits["train"][0].exists():
        with pytest.raises(DataError, match="does not download"):
            list_images(cfg, "train")


def test_label_path_replaces_the_last_images_folder():
    assert str(label_path(__import__("pathlib").Path("/d/images/x/images/a.b.jpg"))) == "/d/images/x/labels/a.b.txt"


# scanning and verification


def test_bad_inputs_are_reported_per_file_and_skipped(dataset_root, caplog):
    train = dataset_root / "images" / "train"
    labels = dataset_root / "labels" / "train"
    (train / "corrupt.jpg").write_bytes(b"not an image at all")
    write_image(train / "tiny.png", size=(5, 5))
    write_image(train / "cols.png")
    (labels / "cols.txt").write_text("0 0.5 0.5 0.2\n")
    write_image(train / "neg.png")
    (labels / "neg.txt").write_text("0 -0.5 0.5 0.2 0.2\n")
    write_image(train / "big.png")
    (labels / "big.txt").write_text("0 0.5 0.5 1.7 0.2\n")
    write_image(train / "nan.png")
    (labels / "nan.txt").write_text("0 0.5 0.5 0.2 0.2\n0 nan 0.5 0.2 inf\n")
    write_image(train / "dup.png")
    (labels / "dup.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    write_image(train / "poly.png")
    (labels / "poly.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.3 0.1 0.3\n")
    write_image(train / "background.png")
    write_image(train / "empty.png")
    (labels / "empty.txt").write_text("")
    truncated = train / "trunc.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, format="JPEG", quality=90)
    truncated.write_bytes(truncated.read_bytes()[:-300])
    before = snapshot(dataset_root)

    with caplog.at_level(logging.WARNING, logger="yolo_accel"):
        index = scan_labels(list_images(load_data_config(write_yaml(dataset_root.parent / "d.yaml", path="ds",
                                                         train="images/train", names=["a", "b"])), "train"))
    text = caplog.text
    assert "corrupt.jpg: ignoring corrupt image" in text
    assert "tiny.png: ignoring corrupt image: image size 5x5 is under 10 pixels" in text
    assert "cols.txt: ignoring image and label: labels need 5 columns" in text
    assert "neg.txt: ignoring image and label: negative label values" in text
    assert "big.txt: ignoring image and label: non-normalised or out of bounds" in text
    assert "nan.txt: ignoring image and label: non-finite values (nan or inf) in row(s) [2]" in text
    assert "dup.png: 1 duplicate labels removed" in text
    assert "trunc.jpg: truncated JPEG, restored when loaded" in text
    names = {p.name: i for i, p in enumerate(index.images)}
    assert set(names) == {"0.png", "1.png", "2.png", "3.png", "dup.png", "poly.png", "background.png",
                          "empty.png", "trunc.jpg"}
    assert index.counts == {"found": 6, "missing": 2, "empty": 1, "corrupt": 6, "damaged": 0}
    assert index.summary() == "9 images, 3 backgrounds, 6 corrupt"
    assert len(index.labels[names["dup.png"]]) == 1
    np.testing.assert_allclose(index.labels[names["poly.png"]], [[1, 0.3, 0.2, 0.4, 0.2]], atol=1e-6)
    assert len(index.segments[names["poly.png"]]) == 1
    restored = read_image(index.images[names["trunc.jpg"]], restore=True)
    assert restored.shape == (64, 64, 3)
    after = snapshot(dataset_root)
    assert {p for p in after if p not in before} == {dataset_root / "labels" / "train.yolo-accel.cache"}
    assert all(after[p] == h for p, h in before.items())  # nothing in the dataset was modified


def test_class_id_beyond_nc_stops_with_a_fix(dataset_root):
    (dataset_root / "labels" / "train" / "2.txt").write_text("4 0.5 0.5 0.2 0.2\n")
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", names=["a", "b"]))
    dataset = YoloDataset(scan_labels(list_images(cfg, "train")))
    with pytest.raises(DataError, match=r"label class 4 exceeds nc=2 \(e.g. in .*2\.png\)"):
        check_labels(dataset, cfg.nc, str(cfg.source))


def test_validation_class_ids_beyond_nc_stop_before_training(dataset_root):
    (dataset_root / "labels" / "val" / "1.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", val="images/val",
                                      names=["a", "b"]))
    dataset = YoloDataset(scan_labels(list_images(cfg, "val")))
    with pytest.raises(DataError, match=r"validation label class 7 exceeds nc=2 \(e.g. in .*1\.png\)"):
        check_labels(dataset, cfg.nc, str(cfg.source), split="validation")


def test_no_labels_at_all_stops(dataset_root):
    for f in (dataset_root / "labels" / "train").iterdir():
        f.unlink()
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", names=["a"]))
    with pytest.raises(DataError, match="no labels found in 4 training images"):
        check_labels(YoloDataset(scan_labels(list_images(cfg, "train"))), 1, "d.yaml")


# cache


def test_cache_is_reused_then_rebuilt_when_stale(dataset_root, caplog):
    images = list_images(load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train",
                                                     names=["a"])), "train")
    first = scan_labels(images)
    cache = dataset_root / "labels" / "train.yolo-accel.cache"
    with np.load(cache, allow_pickle=False) as z:  # loads without pickle support: no code can run
        assert int(z["version"]) == CACHE_VERSION == 2
    with caplog.at_level(logging.INFO, logger="yolo_accel"):
        again = scan_labels(images)
    assert "(cached)" in caplog.text
    assert [x.tolist() for x in again.labels] == [x.tolist() for x in first.labels]
    label = dataset_root / "labels" / "train" / "1.txt"
    edited = label.read_text().replace("0 0.", "0 1.", 1).replace("0.234375", "0.234377")  # same length
    assert len(edited) == len(label.read_text())
    label.write_text(edited)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="yolo_accel"):
        scan_labels(images)
    assert "(cached)" not in caplog.text  # an edit that keeps the size still makes the cache stale
    label.write_text("0 0.5 0.5 0.25 0.25\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="yolo_accel"):
        fresh = scan_labels(images)
    assert "(cached)" not in caplog.text
    assert fresh.labels[1].tolist() == [[0, 0.5, 0.5, 0.25, 0.25]]


def test_a_corrupt_cache_file_is_rebuilt(dataset_root):
    images = list_images(load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train",
                                                     names=["a"])), "train")
    (dataset_root / "labels" / "train.yolo-accel.cache").write_bytes(b"garbage")
    assert len(scan_labels(images).images) == 4


def test_read_only_dataset_still_works(dataset_root, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("yolo_accel.data.labels.atomic_write", refuse)
    images = list_images(load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train",
                                                     names=["a"])), "train")
    with caplog.at_level(logging.WARNING, logger="yolo_accel"):
        index = scan_labels(images)
    assert len(index.images) == 4 and "label cache not saved" in caplog.text


# loading


def test_exif_orientation_and_modes_are_handled(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10] = 255  # white on the left
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    pil.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    loaded = read_image(tmp_path / "rot.jpg")
    assert loaded.shape == (40, 20, 3) and loaded[:10].mean() > 200 and loaded[30:].mean() < 50

    Image.fromarray(np.full((12, 12), 7, np.uint8), "L").save(tmp_path / "grey.png")
    Image.new("RGBA", (12, 12), (1, 2, 3, 0)).save(tmp_path / "alpha.png")
    Image.fromarray(np.full((12, 12), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert read_image(tmp_path / "grey.png")[0, 0].tolist() == [7, 7, 7]
    assert read_image(tmp_path / "alpha.png")[0, 0].tolist() == [1, 2, 3]
    assert read_image(tmp_path / "deep.png")[0, 0].tolist() == [255, 255, 255]


def white_fraction(image, box):
    x, y, w, h = box
    size = image.shape[1]
    x1, y1, x2, y2 = (round(v * size) for v in (x - w / 2 + 0.01, y - h / 2 + 0.01, x + w / 2 - 0.01,
                                                 y + h / 2 - 0.01))
    region = image[0, y1 + 1:y2 - 1, x1 + 1:x2 - 1]
    return (region > 200).mean() if region.size else 1.0


def test_mosaic_boxes_follow_the_pixels(dataset_root):
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", names=["a"]))
    hyp = replace(HYP, hsv_h=0, hsv_s=0, hsv_v=0)  # keep white white
    dataset = YoloDataset(scan_labels(list_images(cfg, "train")), imgsz=128, augment=True, hyp=hyp)
    seen = 0
    for epoch in range(3):
        for i in range(len(dataset)):
            image, labels, _, shapes, gains = dataset[(epoch, i)]
            assert image.dtype == torch.uint8 and image.shape == (3, 128, 128) and shapes is None and gains is None
            for box in labels[:, 2:].tolist():
                if box[2] * 128 > 6 and box[3] * 128 > 6:
                    assert white_fraction(image.numpy(), box) > 0.9
                    seen += 1
    assert seen > 10


def full_canvas_mosaic(dataset, index, rng):
    """The mosaic by definition: four images on the whole 2s x 2s grey canvas, then random_perspective.

    Returns its image, the same canvas warped by Pillow's generic transform (edges blended with the grey), and its
    labels.
    """
    s = dataset.imgsz
    yc, xc = (int(rng.uniform(-b, 2 * s + b)) for b in dataset.mosaic_border)
    indices = [index, *rng.integers(0, len(dataset), size=3).tolist()]
    rng.shuffle(indices)
    canvas = np.full((2 * s, 2 * s, 3), 114, np.uint8)
    all_labels = []
    for tile, i in enumerate(indices):
        image, _, (h, w) = dataset.load_image(i)
        if tile == 0:
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif tile == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif tile == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = image[y1b:y2b, x1b:x2b]
        labels = dataset.labels[i].copy()
        labels[:, 1:] = xywhn_to_xyxy(labels[:, 1:], w, h, x1a - x1b, y1a - y1b)
        all_labels.append(labels)
    labels = np.concatenate(all_labels, 0).astype(np.float64)
    np.clip(labels[:, 1:], 0, 2 * s, out=labels[:, 1:])
    geometry = dataset.geometry
    matrix, _ = perspective_matrix(copy.deepcopy(rng), (2 * s, 2 * s), (s, s), **geometry)
    aligned = aligned_matrix(matrix, (s, s), (2 * s, 2 * s))
    if aligned:  # the warp random_perspective applies: a resize, whose edge pixels blend with the grey around
        matrix = aligned[0]
    image, labels = random_perspective(canvas, labels, rng=rng, border=dataset.mosaic_border, **geometry)
    return image, generic_warp(canvas, matrix, (s, s), pad=2), labels


# tolerance against Pillow's generic transform (with the image's edges blended into the grey around it, as OpenCV
# does): OpenCV interpolates in fixed point, a resize in two rounded passes, and the outermost ring of a resize
# repeats its box's edge
@pytest.mark.parametrize("imgsz,geometry,cache,tolerance", [
    (64, {}, None, 2),  # images used at their size: what cropping the canvas changes
    (64, dict(degrees=20, shear=5), None, 1),
    (64, dict(scale=0.9), None, 2),  # scratch-high's range: far shrinks take the generic warp
    (96, {}, "ram", 2),
    (96, {}, None, 2),  # images resized
])
def test_mosaic_of_the_sampled_region_equals_the_full_canvas(tmp_path, imgsz, geometry, cache, tolerance):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(64, 48), (48, 64), (64, 37), (64, 64), (40, 64), (64, 30), (20, 64)]):
        image = tmp_path / "images" / "train" / f"{i}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image)  # noise: any shift shows
        label = label_path(image)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("0 0.5 0.5 0.5 0.5\n1 0.2 0.3 0.3 0.4\n")
    cfg = load_data_config(write_yaml(tmp_path / "d.yaml", train="images/train", names=["a", "b"]))
    dataset = YoloDataset(scan_labels(list_images(cfg, "train")), imgsz=imgsz, augment=True,
                          hyp=replace(HYP, **geometry), cache=cache)
    decoded = []
    load_image = dataset.load_image
    dataset.load_image = lambda i: decoded.append(i) or load_image(i)
    mosaic_decodes = 0
    for seed in range(40):
        index = seed % len(dataset)
        image, labels = dataset.load_mosaic(index, np.random.default_rng(seed))
        mosaic_decodes += len(decoded)
        expected, generic, expected_labels = full_canvas_mosaic(dataset, index, np.random.default_rng(seed))
        decoded.clear()
        assert np.array_equal(labels, expected_labels)
        # a resize of the region is exact; OpenCV's generic warp rounds sub-pixel positions per region origin
        assert np.abs(image.astype(int) - expected).max() <= (1 if geometry else 0)
        assert np.abs(image.astype(int) - generic)[1:-1, 1:-1].max() <= tolerance
    assert cache or mosaic_decodes < 4 * 40  # images the warp cannot see are not decoded


def test_val_letterbox_boxes_map_back_to_the_original(dataset_root):
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", val="images/val",
                                      names=["a"]))
    dataset = YoloDataset(scan_labels(list_images(cfg, "val")), imgsz=96, rect=True, batch_size=2)
    image, labels, _, ((_h0, _w0), ((_gain_h, gain_w), (pad_x, _pad_y))), gains = dataset[0]
    assert gains is None
    assert image.shape == (3, 96, 128 * 96 // 128) or image.shape[1] % 32 == 0
    for box in labels[:, 2:].tolist():
        assert white_fraction(image.numpy(), box) > 0.9
    x, _y, w, _h = labels[0, 2:].tolist()
    x1_original = (x - w / 2) * image.shape[2]
    assert (x1_original - pad_x) / gain_w == pytest.approx(8, abs=0.5)


def test_ram_and_disk_caches_give_the_same_images(dataset_root, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_ACCEL_CACHE", str(tmp_path / "cache"))
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", names=["a"]))
    index = scan_labels(list_images(cfg, "train"))
    plain = YoloDataset(index, imgsz=64)
    ram = YoloDataset(index, imgsz=64, cache="ram")
    disk = YoloDataset(index, imgsz=64, cache="disk")
    assert list((tmp_path / "cache" / "images").rglob("*.npy"))
    for i in range(len(plain)):
        assert torch.equal(plain[i][0], ram[i][0]) and torch.equal(plain[i][0], disk[i][0])


# decoding and filesystem hazards


def test_big_jpegs_decode_reduced_and_boxes_still_follow_the_pixels(tmp_path):
    root = tmp_path / "big"
    rows = write_image(root / "images" / "train" / "big.jpg", size=(1100, 820), boxes=[(200, 160, 700, 600)])
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "big.txt").write_text(rows[0] + "\n")
    assert reduction_for(1100, 256, root / "a.jpg") == 4 and reduction_for(1100, 600, root / "a.jpg") == 1
    assert reduction_for(1100, 256, root / "a.png") == 1  # only JPEG decoders can skip work
    assert read_image(root / "images" / "train" / "big.jpg", reduce=4).shape == (205, 275, 3)
    cfg = load_data_config(write_yaml(root / "d.yaml", train="images/train", names=["a"]))
    dataset = YoloDataset(scan_labels(list_images(cfg, "train")), imgsz=256)
    image, labels, _, _, _ = dataset[0]
    assert image.shape == (3, 256, 256)
    assert white_fraction(image.numpy(), labels[0, 2:].tolist()) > 0.9


def test_fifos_devices_and_link_loops_are_skipped_in_bounded_time(dataset_root, caplog):

    train = dataset_root / "images" / "train"
    os.mkfifo(train / "pipe.png")  # opening it would block forever
    (train / "self").symlink_to(".")  # a ** glob over it would recurse without end
    (train / "up").symlink_to("..")
    listing = dataset_root / "list.txt"
    listing.write_text("images/train/0.png\nimages/train/pipe.png\n/dev/zero\n")
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="yolo_accel"):
        folder = list_images(load_data_config(write_yaml(dataset_root / "a.yaml", train="images/train",
                                                         names=["a"])), "train")
        globbed = list_images(load_data_config(write_yaml(dataset_root / "b.yaml", train="images/**/*.png",
                                                          names=["a"])), "train")
        listed = list_images(load_data_config(write_yaml(dataset_root / "c.yaml", train="list.txt", names=["a"])),
                             "train")
    assert time.perf_counter() - start < 10
    assert [p.name for p in folder] == ["0.png", "1.png", "2.png", "3.png"]
    assert [p.relative_to(dataset_root).as_posix() for p in globbed] == [  # each file once
        *(f"images/train/{i}.png" for i in range(4)), "images/val/0.png", "images/val/1.png"]
    assert [p.name for p in listed] == ["0.png"]
    assert "skipping" in caplog.text and "pipe.png: not a regular file" in caplog.text
    with pytest.raises(DataError, match=r"pipe\.png: not a regular file"):
        list_images(load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train/pipe.png",
                                                names=["a"])), "train")


def test_coco_and_voc_annotations_convert_to_yolo_labels(tmp_path):
    from typer.testing import CliRunner

    from yolo_accel.cli import app

    source = tmp_path / "src"
    write_image(source / "a.jpg", size=(100, 50), fmt="JPEG")
    write_image(source / "b.jpg", size=(80, 80), fmt="JPEG")
    coco = {"images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50},
                       {"id": 9, "file_name": "b.jpg", "width": 80, "height": 80}],
            "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
            "annotations": [{"image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
                            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},
                            {"image_id": 7, "category_id": 1, "bbox": [90, 40, 30, 30], "iscrowd": 0}]}
    (tmp_path / "instances.json").write_text(__import__("json").dumps(coco))
    result = CliRunner().invoke(app, ["convert-dataset", "coco", "--annotations", str(tmp_path / "instances.json"),
                                      "--images", str(source), "--out", str(tmp_path / "coco"), "--split", "val"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "coco"
    assert (out / "labels" / "val" / "a.txt").read_text().splitlines() == [
        "1 0.200000 0.200000 0.200000 0.200000",  # dog: id 18 is the second category by id
        "0 0.950000 0.900000 0.100000 0.200000"]  # person, clipped to the image; the crowd box skipped
    assert (out / "labels" / "val" / "b.txt").read_text() == ""  # a background image
    config = load_data_config(str(out / "data.yaml"))
    assert config.names == ["person", "dog"] and len(list_images(config, "val")) == 2

    voc = tmp_path / "Annotations"
    voc.mkdir()
    (voc / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>100</width><height>50</height></size>"
        "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>30</xmax>"
        "<ymax>15</ymax></bndbox></object><object><name>dog</name><difficult>1</difficult><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    (voc / "broken.xml").write_text("<annotation><size>")
    result = CliRunner().invoke(app, ["convert-dataset", "voc", "--annotations", str(voc), "--images", str(source),
                                      "--out", str(tmp_path / "voc")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "voc" / "labels" / "train" / "a.txt").read_text() == "0 0.200000 0.200000 0.200000 0.200000\n"
    assert load_data_config(str(tmp_path / "voc" / "data.yaml")).names == ["cat"]  # the difficult dog skipped
    assert "broken.xml: skipped" in result.output
