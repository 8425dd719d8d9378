"""Bad input from the command line, one case per kind of problem: a non-zero exit, one `error:` line that names the
file, flag or value, no traceback, and nothing written outside the run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FIXTURES, REFERENCE, ROOT
from typer.testing import CliRunner

from yolo_accel.checkpoint import load_model, save_weights
from yolo_accel.cli import app
from yolo_accel.data.demo import write_demo_dataset

WEIGHTS = str(FIXTURES / "demo_yolov5n.safetensors")
TINY = str(REFERENCE / "tiny.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data"), train_images=8, val_images=4, imgsz=64, seed=2)


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def refused(args: list[str], *named: str, cwd: Path) -> str:
    """Run the CLI in `cwd`; assert a clean refusal naming `named`; return the output."""
    before = files_under(cwd)
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(previous)
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.output
    for text in named:
        assert text in error_lines[0], (text, error_lines[0])
    created = files_under(cwd) - before  # only run folders and label caches, if anything
    assert all("runs" in p.relative_to(cwd).parts or p.name.endswith(".yolo-accel.cache") for p in created), created
    return error_lines[0]


def train_args(data: Path, *extra: str, **options: str) -> list[str]:
    """`train` on `data` with a tiny model; options (as --name value) replace the defaults."""
    values = {"cfg": TINY, "img": "64", "batch-size": "4", "epochs": "1", "workers": "0", **options}
    return ["train", "--data", str(data), *(x for k, v in values.items() for x in (f"--{k}", v)), "--noautoanchor",
            *extra]


def write_hyp(folder: Path, **changes: float) -> Path:
    values = yaml.safe_load((ROOT / "configs/hyps/hyp.scratch-low.yaml").read_text())
    path = folder / "hyp.bad.yaml"
    path.write_text(yaml.safe_dump({**values, **changes}))
    return path


@pytest.mark.parametrize("key,value", [("lr0", float("nan")), ("lr0", -0.01), ("anchor_t", 0.0),
                                       ("momentum", 1.5), ("hsv_s", float("inf"))])
def test_hyperparameters_out_of_range(data, tmp_path, key, value):
    hyp = write_hyp(tmp_path, **{key: value})
    refused(train_args(data, "--hyp", str(hyp)), str(hyp), key, cwd=tmp_path)


@pytest.mark.parametrize("option,value,named", [
    ("workers", "-1", "--workers"),
    ("batch-size", "0", "--batch-size"),
    ("img", "0", "--imgsz"),
    ("img", "100000", "--imgsz must be from 32 to 8192"),
    ("freeze", "1000", "freezes every layer"),
    ("device", "0", "--device 0: no CUDA device is available here (the devices are: cpu)"),
    ("device", "zero", "--device"),
    ("epochs", "0", "--epochs"),
    ("name", "", "--name must name a folder"),
    ("name", "..", "--name must name a folder"),
])
def test_training_flags_out_of_range(data, tmp_path, option, value, named):
    if option == "device" and value == "0" and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    refused(train_args(data, **{option: value}), named, cwd=tmp_path)


def test_info_flags_out_of_range(tmp_path):
    refused(["info", "--img", "0"], "--img", cwd=tmp_path)
    refused(["info", "--nc", "0"], "--nc", cwd=tmp_path)


@pytest.mark.parametrize("command,flags,named", [
    ("val", ["--img", "0"], "--imgsz"),
    ("val", ["--conf-thres", "1.5"], "--conf-thres"),
    ("val", ["--iou-thres", "-0.1"], "--iou-thres"),
    ("detect", ["--img", "-5"], "--imgsz"),
    ("detect", ["--conf-thres", "2"], "--conf-thres"),
    ("detect", ["--max-det", "0"], "--max-det"),
    ("detect", ["--img", "100000"], "--imgsz"),
    ("detect", ["--name", ""], "--name"),
    ("val", ["--name", "."], "--name"),
    ("evolve", ["--generations", "0"], "--generations"),
    ("evolve", ["--resume", "nowhere"], "not an evolve folder"),
    ("export", ["--img", "0"], "--imgsz"),
    ("export", ["--batch-size", "0"], "--batch-size"),
])
def test_inference_flags_out_of_range(data, tmp_path, command, flags, named):
    where = {"val": ["--data", str(data)], "detect": ["--source", str(data.parent / "images" / "val")],
             "export": [], "evolve": ["--data", str(data)]}[command]
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(Path(WEIGHTS).read_bytes())
    refused([command, "--weights", str(weights), *where, *flags], named, cwd=tmp_path)


def test_validation_labels_beyond_nc_stop_before_training(data, tmp_path):
    copy = tmp_path / "copy"
    for source in data.parent.rglob("*"):
        if source.is_file() and source.suffix in (".png", ".txt", ".yaml"):
            target = copy / source.relative_to(data.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    label = sorted((copy / "labels" / "val").glob("*.txt"))[0]
    label.write_text("99 0.5 0.5 0.2 0.2\n")
    (copy / "data.yaml").write_text((copy / "data.yaml").read_text().replace(str(data.parent), str(copy)))
    refused(train_args(copy / "data.yaml"), "validation label class 99", label.stem, cwd=tmp_path)


def test_weights_asking_for_a_huge_model(data, tmp_path):
    model = load_model(WEIGHTS)
    weights = save_weights(model, tmp_path / "huge.safetensors",
                           extra={"model_yaml": json.dumps({**model.yaml, "nc": 20_000_000})})
    refused(["detect", "--weights", str(weights), "--source", str(data.parent / "images" / "val")],
            "huge.safetensors", "nc", cwd=tmp_path)


def test_a_fifo_as_source(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    refused(["detect", "--weights", WEIGHTS, "--source", str(tmp_path / "pipe.jpg")], "pipe.jpg",
            "not a regular file", cwd=tmp_path)


def test_missing_and_unreadable_files(data, tmp_path):
    refused(["val", "--data", str(data), "--weights", str(tmp_path / "none.safetensors")], "none.safetensors",
            cwd=tmp_path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    refused(["detect", "--weights", str(garbage), "--source", str(data.parent / "images" / "val")],
            "garbage.safetensors", cwd=tmp_path)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    refused(train_args(bad_yaml), "bad.yaml", cwd=tmp_path)


def test_runs_started_together_get_folders_of_their_own(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from yolo_accel.files import increment_path

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: increment_path(tmp_path / "exp", mkdir=True), range(16)))
    assert len(set(folders)) == 16 and all(f.is_dir() for f in folders)


def test_a_run_folder_in_use_is_refused_with_exist_ok(data, tmp_path):
    from yolo_accel.files import exclusive_use

    run = tmp_path / "runs" / "train" / "exp"
    run.mkdir(parents=True)
    with exclusive_use(run, "training run"):  # as a training run in another process holds it
        refused(train_args(data, "--exist-ok", project=str(tmp_path / "runs" / "train")), str(run), "in use",
                cwd=tmp_path)


def test_a_torn_evolve_row_is_skipped_and_the_next_stays_whole(tmp_path, caplog):
    import logging

    from yolo_accel.evolve import append_row, read_ledger

    ledger = tmp_path / "evolve.csv"
    append_row(ledger, {"lr0": 0.01}, (0.1,) * 7)
    with open(ledger, "a") as f:
        f.write("      0.2,   0.3,")  # a crash mid-append
    append_row(ledger, {"lr0": 0.02}, (0.4,) * 7)
    with caplog.at_level(logging.WARNING, logger="yolo_accel"):
        _, rows = read_ledger(ledger)
    assert rows.shape == (2, 8) and rows[:, -1].tolist() == [0.01, 0.02]
    assert "skipping line 3, a torn or damaged row" in caplog.text


def unusable_projects(tmp_path: Path) -> list[tuple[str, str]]:
    """(--project, what the error names) for places a run folder cannot be made."""
    afile = tmp_path / "notes.txt"
    afile.write_text("a file, not a folder")
    places = [(str(afile / "runs"), "notes.txt"), ("/proc/yolo-accel-runs", "/proc")]
    if Path("/sys/kernel").is_dir():
        places.append(("/sys/kernel/yolo-accel-runs", "sysfs"))
    return places


@pytest.mark.parametrize("command", ["train", "val", "detect", "evolve"])
def test_output_places_that_cannot_be_made(data, tmp_path, command):
    """--project under a file or on a kernel file system: one error line naming the path, before any work."""
    for project, named in unusable_projects(tmp_path):
        args = {"train": train_args(data, project=project),
                "val": ["val", "--data", str(data), "--weights", WEIGHTS, "--img", "64", "--project", project],
                "detect": ["detect", "--weights", WEIGHTS, "--source", str(data.parent / "images" / "val"),
                           "--project", project],
                "evolve": ["evolve", "--data", str(data), "--cfg", TINY, "--epochs", "1", "--img", "64",
                           "--project", project, "--generations", "1"]}[command]
        line = refused(args, named, cwd=tmp_path)
        assert "cannot write the run folder" in line
        assert not Path(project).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_output_places_without_permission(data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    weights = tmp_path / "locked" / "w.safetensors"
    weights.write_bytes(Path(WEIGHTS).read_bytes())
    locked.chmod(0o555)
    try:
        refused(train_args(data, project=str(locked / "runs")), str(locked), "permission denied", cwd=tmp_path)
        refused(["export", "--weights", str(weights), "--include", "torchscript"], str(locked), cwd=tmp_path)
    finally:
        locked.chmod(0o755)


def test_a_read_only_file_system_is_named(tmp_path, monkeypatch):
    from yolo_accel.config import ConfigError
    from yolo_accel.files import check_output_folder

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(ConfigError, match=f"{tmp_path} is a read-only file system"):
        check_output_folder(tmp_path / "runs" / "exp")
