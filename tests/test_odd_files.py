"""Files as users have them: names that are not valid text, JPEGs with corrupt data that still decode, a loader
worker killed mid-epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FIXTURES, REFERENCE, ROOT

from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.data.labels import scan_labels
from yolo_accel.data.sources import list_images, load_data_config
from yolo_accel.val import coco_image_id

WEIGHTS = str(FIXTURES / "demo_yolov5n.safetensors")
TINY = str(REFERENCE / "tiny.yaml")
# an old camera's Latin-1 bytes (not UTF-8), other scripts, spaces, unicode digits
ODD_STEMS = [b"\xff\xfecam 01", "café 中文".encode(), "½".encode(), "٣".encode()]
STRICT = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONUNBUFFERED": "1"}  # a UTF-8 terminal


def rename_to_odd_stems(data: Path) -> None:
    """The first images of each split (and their labels) get ODD_STEMS as names, as JPEGs."""
    root = os.fsencode(data.parent)
    for split in (b"train", b"val"):
        images = sorted(os.listdir(root + b"/images/" + split))
        for stem, name in zip(ODD_STEMS, images):
            source = root + b"/images/" + split + b"/" + name
            encoded = cv2.imencode(".jpg", cv2.imread(os.fsdecode(source)))[1]
            with open(root + b"/images/" + split + b"/" + stem + b".jpg", "wb") as f:
                f.write(encoded.tobytes())
            os.remove(source)
            label = root + b"/labels/" + split + b"/" + name.rsplit(b".", 1)[0] + b".txt"
            os.rename(label, root + b"/labels/" + split + b"/" + stem + b".txt")


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    data = write_demo_dataset(tmp_path_factory.mktemp("odd"), train_images=8, val_images=4, imgsz=64, seed=2)
    rename_to_odd_stems(data)
    return data


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=STRICT, capture_output=True,
                          text=True, errors="replace", timeout=600)


def test_detect_reads_and_names_files_whose_names_are_not_text(odd_data, tmp_path):
    """OpenCV given such a name crashed the process (SIGSEGV); now they are read, saved and printed escaped."""
    source = odd_data.parent / "images" / "val"
    done = cli("detect", "--weights", WEIGHTS, "--source", str(source), "--imgsz", "64", "--save-txt",
               "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "\\xff\\xfecam 01.jpg" in done.stdout  # the bytes as escapes, the rest as it is
    assert "café 中文.jpg" in done.stdout
    saved = set(os.listdir(os.fsencode(tmp_path / "runs" / "exp")))
    assert {stem + b".jpg" for stem in ODD_STEMS} <= saved


def test_coco_image_ids_only_from_ascii_digits():
    assert coco_image_id("000000000139") == 139  # COCO's own names
    assert coco_image_id("42") == 42
    for stem in ("½", "٣", "a1", "1e5", "café", "\udcff\udcfecam"):
        assert coco_image_id(stem) == stem  # str.isnumeric() is true for the first two; int() refuses them
    json.dumps([coco_image_id("\udcff")])  # ASCII JSON escapes what is not text


@pytest.mark.slow
def test_train_and_val_on_files_whose_names_are_not_text(odd_data, tmp_path):
    trained = cli("train", "--data", str(odd_data), "--cfg", TINY, "--img", "64", "--batch-size", "4", "--epochs", "1",
                  "--workers", "1", "--noautoanchor", "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    weights = tmp_path / "runs" / "exp" / "weights" / "best.safetensors"
    assert (tmp_path / "runs" / "exp" / "train_batch0.jpg").is_file()
    validated = cli("val", "--data", str(odd_data), "--weights", WEIGHTS, "--img", "64", "--save-json", "--save-txt",
                    "--save-conf", "--conf-thres", "0.001", "--project", str(tmp_path / "val"), cwd=tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert weights.is_file()
    folder = tmp_path / "val" / "exp"
    ids = {row["image_id"] for row in json.loads((folder / "demo_yolov5n_predictions.json").read_text())}
    assert {"½", "٣"} <= ids and all(isinstance(i, str) for i in ids)  # every val image has an odd name
    labels = set(os.listdir(os.fsencode(folder / "labels")))
    assert b"\xff\xfecam 01.txt" in labels


def corrupt_scan_data(jpeg: bytes) -> bytes:
    """Restart markers in the middle of a scan that has no restart interval: libjpeg warns "Corrupt JPEG data:
    premature end of data segment" and decodes the rest as it can."""
    start = jpeg.index(b"\xff\xda")
    start += 2 + int.from_bytes(jpeg[start + 2:start + 4], "big")
    middle = (start + len(jpeg) - 2) // 2
    return jpeg[:middle] + b"\xff\xd0" * 3 + jpeg[middle:]


def test_jpegs_with_corrupt_data_are_named_once_per_dataset(tmp_path, caplog):
    data = write_demo_dataset(tmp_path / "data", train_images=6, val_images=2, imgsz=64, seed=1)
    folder = data.parent / "images" / "train"
    for png in sorted(folder.glob("*.png")):
        jpeg = cv2.imencode(".jpg", cv2.imread(str(png)))[1].tobytes()
        png.with_suffix(".jpg").write_bytes(corrupt_scan_data(jpeg) if png.stem.endswith("3") else jpeg)
        png.unlink()
    damaged = folder / "00003.jpg"
    assert cv2.imdecode(np.frombuffer(damaged.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None  # it decodes
    images = list_images(load_data_config(str(data)), "train")
    with caplog.at_level("INFO", logger="yolo_accel"):
        index = scan_labels(images, workers=2)
    assert len(index.images) == 6 and index.counts["damaged"] == 1 and index.counts["corrupt"] == 0
    assert f"{damaged}: Corrupt JPEG data: premature end of data segment" in caplog.text
    assert "1 with corrupt JPEG data (kept)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="yolo_accel"):
        again = scan_labels(images, workers=2)
    assert "(cached)" in caplog.text and f"{damaged}: Corrupt JPEG data" in caplog.text
    assert again.counts["damaged"] == 1


@pytest.mark.slow
def test_a_killed_loader_worker_saves_the_state_and_resume_is_exact(tmp_path):
    from test_train import final_weights, latest_state, max_difference, tiny_config

    from yolo_accel.callbacks import Callbacks
    from yolo_accel.config import TrainConfig
    from yolo_accel.data.loader import LoaderWorkerLost
    from yolo_accel.train import train

    data = write_demo_dataset(tmp_path / "data", train_images=24, val_images=8, imgsz=64, seed=3)
    config = dict(batch_size=2, workers=2, epochs=2, noval=True, noplots=True)  # 12 batches: more than prefetched
    train(tiny_config(data, tmp_path / "a", **config))

    def kill_a_worker(event) -> None:
        if (event.epoch, event.batch) == (1, 1):
            import multiprocessing

            os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

    callbacks = Callbacks()
    callbacks.add("on_train_batch_end", kill_a_worker)
    with pytest.raises(LoaderWorkerLost, match=r"data loader worker \(pid \d+\) .* during epoch 1; the training "
                                               r"state is saved at epoch 1, batch \d.*lower --workers"):
        train(tiny_config(data, tmp_path / "b", **config), callbacks=callbacks)
    run = tmp_path / "b" / "exp"
    loop = json.loads((latest_state(run) / "trainer.json").read_text())["loop"]
    assert loop["epoch"] == 1 and loop["batch"] >= 2
    train(TrainConfig(resume=str(run)))
    assert max_difference(final_weights(tmp_path / "a" / "exp"), final_weights(run)) <= 1e-6
