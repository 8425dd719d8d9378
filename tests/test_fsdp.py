"""FSDP (torch's FSDP2) through `accelerate launch --config_file configs/accelerate/fsdp.yaml`, on CPU processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REFERENCE, ROOT
from safetensors import safe_open
from safetensors.torch import load_file
from test_distributed import (
    ACCELERATE,
    DDP,
    descendants,
    final_model,
    free_port,
    latest_snapshot,
    launch,
    relative_difference,
    run,
    snapshot_tensors,
    stop_mid_epoch_and_resume,
    train_args,
)

from yolo_accel.checkpoint import load_model
from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.results import read_results

pytestmark = pytest.mark.slow
FSDP = [*ACCELERATE, "--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml")]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data"), train_images=24, val_images=8, imgsz=64, seed=3)


def test_fsdp_equals_ddp_and_writes_the_same_files(data, tmp_path):
    sharded = run(launch(FSDP, data, tmp_path / "fsdp", "--close-mosaic", "2"))
    run(launch(DDP, data, tmp_path / "ddp", "--close-mosaic", "2"))
    runs = [tmp_path / "fsdp" / "exp", tmp_path / "ddp" / "exp"]
    assert sharded.stdout.count("Starting training") == 1 and not (tmp_path / "fsdp" / "exp2").exists()
    # the same batches, gradients averaged over the same 2 processes: equal up to float rounding (DDP vs 1 process
    # is held to 2%); the EMA, which FSDP keeps as shards, too
    assert relative_difference(final_model(runs[0]), final_model(runs[1])) < 1e-5
    fsdp_state, ddp_state = snapshot_tensors(runs[0]), snapshot_tensors(runs[1])
    assert fsdp_state.keys() == ddp_state.keys()
    assert relative_difference({k: v for k, v in fsdp_state.items() if k.startswith("ema.")},
                               {k: v for k, v in ddp_state.items() if k.startswith("ema.")}) < 1e-5
    rows = [read_results(r / "results.csv") for r in runs]
    assert len(rows[0]) == len(rows[1]) == 2
    assert abs(rows[0][-1]["train/box_loss"] - rows[1][-1]["train/box_loss"]) < 1e-4
    # weights files: the same keys, shapes, dtypes and metadata fields as a DDP run's; they load and validate
    for name in ("last", "best"):
        files = [r / "weights" / f"{name}.safetensors" for r in runs]
        tensors = [load_file(str(f)) for f in files]
        assert list(tensors[0]) == list(tensors[1])
        assert all(tensors[0][k].shape == tensors[1][k].shape and tensors[0][k].dtype == tensors[1][k].dtype
                   for k in tensors[0])
        metadata = [safe_open(str(f), "pt").metadata() for f in files]
        assert metadata[0].keys() == metadata[1].keys()
    assert load_model(runs[0] / "weights" / "best.safetensors").nc == load_model(runs[1] / "weights" /
                                                                                  "best.safetensors").nc
    validated = run([sys.executable, str(ROOT / "cli.py"), "val", "--data", str(data), "--weights",
                     str(runs[0] / "weights" / "best.safetensors"), "--img", "64", "--project", str(tmp_path / "val")])
    assert "all" in validated.stdout


def test_fsdp_killed_and_resumed_equals_straight(data, tmp_path):
    """SIGKILL to the whole job (launcher, training processes, loader workers) after its first snapshot, as a lost
    machine; then --resume under FSDP."""
    run(launch(FSDP, data, tmp_path / "a", "--epochs", "5"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(launch(FSDP, data, tmp_path / "b", "--epochs", "5"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "b" / "exp"
    deadline = time.time() + 300
    while not (run_dir / "state" / "latest.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere into the next epoch
    for pid in [victim.pid, *descendants(victim.pid)]:
        os.kill(pid, signal.SIGKILL)
    victim.wait()
    epoch_at_kill = json.loads((latest_snapshot(run_dir) / "trainer.json").read_text())["loop"]["epoch"]
    assert epoch_at_kill < 5, "the run finished before it could be killed"
    resumed = run([*FSDP, "--main_process_port", str(free_port()), str(ROOT / "cli.py"), "train", "--resume",
                   str(run_dir)])
    assert "Resuming training from" in resumed.stdout
    assert relative_difference(snapshot_tensors(tmp_path / "a" / "exp"), snapshot_tensors(run_dir)) < 1e-7
    assert [r["epoch"] for r in read_results(run_dir / "results.csv")] == [0, 1, 2, 3, 4]


def test_fsdp_stopped_mid_epoch_resumes_from_that_batch(data, tmp_path):
    stop_mid_epoch_and_resume(FSDP, data, tmp_path)


def test_fsdp_on_one_process_is_refused_with_one_line(data, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    result = subprocess.run([sys.executable, *train_args(data, tmp_path, REFERENCE / "tiny.yaml")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "error: FSDP was requested" in result.stderr + result.stdout and "Traceback" not in result.stderr
