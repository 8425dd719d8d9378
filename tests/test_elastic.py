"""A lost training process: torch elastic restarts (`accelerate launch --max_restarts N`) continue the run on their
own from its latest snapshot; without restarts the survivors stop at once with one line saying what to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_distributed import DDP, descendants, latest_snapshot, launch, relative_difference, run, snapshot_tensors
from test_fsdp import FSDP

from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.results import read_results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data"), train_images=24, val_images=8, imgsz=64, seed=3)


def kill_rank_once(command: list[str], run_dir: Path, rank: int, mid_epoch: bool) -> tuple[int, str, float]:
    """Start `command`; once a snapshot exists (one saved inside an epoch if `mid_epoch`), SIGKILL the training
    process of `rank`, as the OOM killer or a lost machine would. Returns the exit code, the output and the seconds
    from the kill to the launcher's exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            loop = json.loads((latest_snapshot(run_dir) / "trainer.json").read_text())["loop"]
            if loop["batch"] > 0 or not mid_epoch:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    for pid in descendants(launcher.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK" in b"\0".join(environ):
            os.kill(pid, signal.SIGKILL)
            break
    else:
        pytest.fail("no training process to kill")
    killed = time.time()
    output = launcher.communicate(timeout=600)[0]
    return launcher.returncode, output, time.time() - killed


@pytest.mark.parametrize("launcher", [DDP, FSDP], ids=["ddp", "fsdp"])
def test_a_restarted_launch_continues_its_run_from_the_latest_snapshot(data, tmp_path, launcher):
    interval = ["--epochs", "3", "--snapshot-interval", "2"]  # 3 batches per epoch: snapshots inside epochs too
    run(launch(launcher, data, tmp_path / "a", *interval))
    elastic = [*launcher, "--max_restarts", "1", "--monitor_interval", "0.5"]
    code, output, _ = kill_rank_once(launch(elastic, data, tmp_path / "b", *interval), tmp_path / "b" / "exp", 1,
                                     mid_epoch=True)
    assert code == 0, output[-3000:]
    assert "Restarted by the launcher (restart 1): resuming" in output
    assert "Resuming training from" in output and ", batch 0" not in output.split("Resuming training from")[1][:80]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["exp"]  # the same run folder, no exp2
    assert [r["epoch"] for r in read_results(tmp_path / "b" / "exp" / "results.csv")] == [0, 1, 2]
    assert relative_difference(snapshot_tensors(tmp_path / "a" / "exp"), snapshot_tensors(tmp_path / "b" / "exp")) \
        < 1e-7


def test_without_restarts_the_survivor_names_the_lost_rank_and_stops(data, tmp_path):
    code, output, seconds = kill_rank_once(launch(DDP, data, tmp_path, "--epochs", "20"), tmp_path / "exp", 1,
                                           mid_epoch=False)
    assert code != 0
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output[-3000:]
    assert "training process rank 1 was lost" in lines[0] and f"--resume {tmp_path / 'exp'}" in lines[0]
    assert "[rank0]: Traceback" not in output  # no traceback from the survivor
    assert seconds < 60
