from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REFERENCE, ROOT
from typer.testing import CliRunner

from yolo_accel.checkpoint import read_weights
from yolo_accel.cli import app
from yolo_accel.data.demo import write_demo_dataset

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    # the first word of each row of the Commands panel
    commands = result.output[result.output.index("Commands"):]
    listed = [line.strip("│ ").split()[0] for line in commands.splitlines()
              if line.startswith("│ ") and not line.startswith("│  ")]
    assert listed == ["train", "val", "detect", "export", "evolve", "convert", "info", "convert-dataset"]


@pytest.mark.parametrize("command", ["train", "val", "detect", "export", "evolve", "convert", "info",
                                     "convert-dataset"])
def test_help_shows_percent_signs_as_written(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "%%" not in result.output, result.output


def test_info_prints_the_reference_summary_line():
    expected = json.loads((REFERENCE / "models.json").read_text())["yolov5s"]["summary"]["line"]
    result = runner.invoke(app, ["info", "--model", "yolov5s.yaml", "--img", "640"])
    assert result.exit_code == 0, result.output
    assert f"YOLOv5s summary: {expected}" in result.output
    assert "SPPF" in result.output and "Detect" in result.output


def test_info_unknown_model_exits_non_zero():
    result = runner.invoke(app, ["info", "--model", "yolov5q"])
    assert result.exit_code == 1
    assert "yolov5q: no such file" in result.output


def test_convert_then_info(tmp_path):
    out = tmp_path / "tiny.safetensors"
    result = runner.invoke(app, ["convert", str(REFERENCE / "tiny_ultralytics.pt"), str(out)])
    assert result.exit_code == 0, result.output
    _, metadata = read_weights(out)
    assert json.loads(metadata["names"]) == ["red", "green", "blue"]
    assert metadata["converted_from"] == "tiny_ultralytics.pt"
    info = runner.invoke(app, ["info", "--weights", str(out), "--no-verbose"])
    assert info.exit_code == 0 and "tiny summary: 214 layers" in info.output


def test_convert_refuses_to_overwrite(tmp_path):
    out = tmp_path / "keep.safetensors"
    out.write_bytes(b"precious")
    result = runner.invoke(app, ["convert", str(REFERENCE / "tiny_ultralytics.pt"), str(out)])
    assert result.exit_code == 1 and "already exists" in result.output
    assert out.read_bytes() == b"precious"


def test_convert_missing_source(tmp_path):
    result = runner.invoke(app, ["convert", str(tmp_path / "none.pt"), str(tmp_path / "o.safetensors")])
    assert result.exit_code == 1 and "none.pt: file not found" in result.output


@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "--resume"], ["train", "--resume", ""]),
    (["train", "--resume", "--epochs", "5"], ["train", "--resume", "", "--epochs", "5"]),
    (["train", "--resume", "runs/train/exp3"], ["train", "--resume", "runs/train/exp3"]),
    (["train", "--cache", "--rect"], ["train", "--cache", "ram", "--rect"]),
    (["train", "--cache", "disk"], ["train", "--cache", "disk"]),
    (["train", "--evolve"], ["train", "--evolve", "300"]),
    (["train", "--evolve", "--epochs", "3"], ["train", "--evolve", "300", "--epochs", "3"]),
    (["train", "--freeze", "0", "1", "2", "--rect"], ["train", "--freeze", "0 1 2", "--rect"]),
    (["train", "--freeze", "10"], ["train", "--freeze", "10"]),
])
def test_flags_that_may_stand_alone(argv, expected):
    from yolo_accel.cli import expand_optional_values

    assert expand_optional_values(argv) == expected


def test_several_devices_start_one_process_each_through_accelerate(monkeypatch):
    from yolo_accel.cli import launch_command

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("ACCELERATE_LAUNCH", raising=False)
    command = launch_command("0,1,2,3", ["train", "--data", "my.yaml", "--device", "0,1,2,3"])
    assert command[1:] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4",
                           "--num_machines", "1", "--dynamo_backend", "no", "-m", "yolo_accel.cli", "train",
                           "--data", "my.yaml", "--device", "0,1,2,3"]
    assert launch_command("0", ["train"]) is None and launch_command("", ["train"]) is None
    monkeypatch.setenv("LOCAL_RANK", "0")  # inside the launched processes: train
    assert launch_command("0,1", ["train"]) is None


def test_evolve_under_a_process_group_and_fsdp_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["evolve", "--epochs", "1", "--generations", "1", "--project", str(tmp_path)])
    assert result.exit_code == 1 and "evolve trains one process per candidate" in result.output
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    result = runner.invoke(app, ["train", "--epochs", "1", "--project", str(tmp_path)])
    assert result.exit_code == 1 and "FSDP was requested" in result.output and "accelerate launch" in result.output
    assert not list(tmp_path.iterdir())  # refused before a run folder was made


def test_sigusr1_prints_where_a_run_is(tmp_path):
    """`kill -USR1` on a training process prints every thread's stack and the run goes on (a hung job's diagnosis)."""
    data = write_demo_dataset(tmp_path / "data", train_images=8, val_images=4, imgsz=64, seed=0)
    command = [sys.executable, str(ROOT / "cli.py"), "train", "--data", str(data), "--cfg",
               str(REFERENCE / "tiny.yaml"),
               "--epochs", "300", "--batch-size", "4", "--img", "64", "--workers", "0", "--noautoanchor", "--noplots",
               "--project", str(tmp_path / "runs")]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if "Starting training" in line:
                break
        process.send_signal(signal.SIGUSR1)
        time.sleep(3)
        assert process.poll() is None, "SIGUSR1 ended the run"
    finally:
        process.kill()
    output = process.communicate()[0]
    assert "most recent call first" in output and "train.py" in output
