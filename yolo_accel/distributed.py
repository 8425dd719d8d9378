"""FSDP on top of Accelerate: switching it on (CPU processes too), sharding a detector, full state of a sharded one.

Accelerate 1.16 enables FSDP only for GPU launches: launched with an FSDP config on CPU processes, its state comes up
as MULTI_CPU over gloo, where torch's FSDP2 (`fully_shard`) runs as well. `enable_fsdp` is the one place that
switches such a state to FSDP; on GPUs Accelerate has done it already.

Sharding is FSDP2's, one unit per layer of `model.model` (a layer's parameters are gathered for its forward and
backward and freed after). Mixed precision stays what it is without FSDP, autocast, with parameters gathered and
gradients reduced in fp32: the same arithmetic as DDP (so an FSDP run equals a DDP run), BatchNorm statistics and
the detection head in fp32. Gradients are reduced at every backward (no `no_sync`), so the gradients accumulated
towards YOLOv5's nominal batch are ordinary sharded `.grad` tensors, saved and restored with the training state.

Weights and training state written by a sharded run are full tensors, the same files as any other run's: the
helpers here gather them (every process must call them) and scatter them back.

A lost process: torch elastic (`accelerate launch --max_restarts N`) restarts them all; the restarted launch finds
its run folder in the launcher's store and continues it. Without restarts, a survivor names the lost rank
(`ProcessLost`).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn

from .config import ConfigError, TrainConfig
from .state import StateError, snapshots

LOGGER = logging.getLogger("yolo_accel")

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # torch < 2.4: no FSDP2
    DTensor, distribute_tensor = (), None


NOT_LAUNCHED = ("FSDP was requested (ACCELERATE_USE_FSDP) but this is not a multi-process launch; start it with "
                "`accelerate launch --config_file configs/accelerate/fsdp.yaml cli.py train ...`")


def fsdp_requested() -> bool:
    """The launch asked for FSDP (`accelerate launch` with `distributed_type: FSDP` sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def check_fsdp_launch() -> None:
    """FSDP asked for outside a launcher (the variable set by hand, or a script run directly): refuse before anything
    is made. A launch with one process is fine: FSDP then shards over one."""
    if fsdp_requested() and "LOCAL_RANK" not in os.environ:
        raise ConfigError(NOT_LAUNCHED)


def enable_fsdp(accelerator: Accelerator) -> FullyShardedDataParallelPlugin:
    """Make the state FSDP when the launch asked for it; the seam for CPU processes (see the module docstring)."""
    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        plugin = state.fsdp_plugin
    elif state.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables, as Accelerate builds it
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
    else:
        raise ConfigError(NOT_LAUNCHED)
    if plugin.fsdp_version != 2 or distribute_tensor is None:
        raise ConfigError("FSDP needs fsdp_version: 2 in the accelerate config (FSDP2, torch >= 2.4); FSDP1 is not "
                          "supported")
    return plugin


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def broadcast_module(module: nn.Module, accelerator: Accelerator) -> None:
    """Every process takes the main process's parameters and buffers (what DDP does when it wraps a model; each
    process built its model from its own seed). On the accelerator's device."""
    module.to(accelerator.device)
    for tensor in module.state_dict().values():
        dense = tensor.contiguous()  # a channels_last weight is sent as a dense copy
        torch.distributed.broadcast(dense, src=0)
        if dense is not tensor:
            tensor.copy_(dense)


def shard_model(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """FSDP2 in place: each layer of `model.model` that has parameters is one unit, then the whole model (the root,
    which owns nothing left). Call before building the optimizer; Accelerate's prepare() then finds it sharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    options = {"mesh": mesh, "reshard_after_forward": plugin.reshard_after_forward,
               "mp_policy": MixedPrecisionPolicy(reduce_dtype=torch.float32)}  # compute precision: autocast's
    if plugin.cpu_offload is not None:
        options["offload_policy"] = plugin.cpu_offload
    for layer in model.model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def full_tensor(value: Any, keep: bool = True) -> Any:
    """A DTensor gathered whole into host memory (a collective: every process calls it, in the same order; with
    keep=False the gathered copy is dropped at once, for processes that only take part); anything else as it
    is."""
    if not isinstance(value, DTensor):
        return value
    gathered = value.full_tensor()
    return gathered.cpu() if keep else None  # host memory: a GPU holds a shard, not the whole state


def sharded_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` cut into this process's shard the way `like` (a DTensor) is; no communication."""
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def full_state_dict(module: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """module.state_dict() with every sharded tensor gathered (collective; see full_tensor for `keep`)."""
    return {k: full_tensor(v, keep) for k, v in module.state_dict().items()}


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors into a (possibly sharded) module: each process keeps its shard."""
    own = module.state_dict()
    module.load_state_dict({k: sharded_like(v.to(own[k].dtype), own[k]) for k, v in state.items()})


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict:
    """optimizer.state_dict() with sharded tensors (momentum, Adam's moments) gathered (collective; see full_tensor
    for `keep`): the same format as an unsharded optimizer's, parameters numbered in group order."""
    state = optimizer.state_dict()
    return {"state": {pid: {k: full_tensor(v, keep) for k, v in entries.items()}
                      for pid, entries in state["state"].items()},
            "param_groups": state["param_groups"]}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The inverse of full_optimizer_state: each state tensor of a sharded parameter cut like it."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.load_state_dict({
        "state": {pid: {k: sharded_like(v, params[int(pid)]) if isinstance(v, torch.Tensor) and v.dim() else v
                        for k, v in entries.items()} for pid, entries in state["state"].items()},
        "param_groups": state["param_groups"]})


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """This process's part of a DTensor (its storage), or the tensor itself."""
    return value.to_local() if isinstance(value, DTensor) else value


def from_local(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped and sharded like `like` (a DTensor) whose part on this process is `local`."""
    if not isinstance(like, DTensor):
        return local
    return DTensor.from_local(local.to(like.device, like.dtype), like.device_mesh, like.placements,
                              shape=like.shape, stride=like.stride(), run_check=False)


# torch elastic (`accelerate launch --max_restarts N`): a restarted launch continues its own run

RUN_FOLDER_KEY = "yolo-accel/run-folder"


def restart_count() -> int:
    """How many times torch elastic has restarted this launch's processes (0: the first attempt)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def launcher_store(timeout: timedelta = timedelta(seconds=60)):
    """The key-value store of the launcher's agent (torchrun's, as `accelerate launch` runs it), which outlives the
    training processes it restarts and is reachable from every machine of the launch; None outside such a launch."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    return torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                      timeout=timeout, wait_for_workers=False)


def join_restarted_group(use_cpu: bool) -> None:
    """Form the process group of a restarted attempt. The launcher's store still holds the first attempt's keys,
    which torch's default rendezvous reads again (gloo then fails with "connectFullMesh failed ... Connection
    refused", or waits for ever on an address that is gone), so each attempt's processes meet under a prefix of
    their own. Accelerate then finds the group formed."""
    store = launcher_store(timeout=timedelta(minutes=30))  # the default process group timeout
    if store is None or torch.distributed.is_initialized():
        return
    torch.distributed.init_process_group("gloo" if use_cpu else "nccl",
                                         store=torch.distributed.PrefixStore(f"yolo-accel/attempt-{restart_count()}",
                                                                             store),
                                         rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


def remember_run_folder(folder: Path) -> None:
    """Record the run folder for the launcher's later restarts (main process, once the folder is chosen)."""
    store = launcher_store()
    if store is not None:
        store.set(RUN_FOLDER_KEY, str(folder.resolve()))


def restarted_run_folder() -> Path | None:
    """The run folder an earlier attempt of this launch trained into, when torch elastic has restarted it."""
    if restart_count() == 0:
        return None
    store = launcher_store()
    if store is None or not store.check([RUN_FOLDER_KEY]):
        return None
    return Path(store.get(RUN_FOLDER_KEY).decode())


def process_key(rank: int) -> str:
    return f"yolo-accel/attempt-{restart_count()}/process-{rank}"


def register_process() -> None:
    """Leave this process's host and pid in the launcher's store, so a survivor can tell which one was lost."""
    store = launcher_store() if "RANK" in os.environ else None
    if store is not None:
        store.set(process_key(int(os.environ["RANK"])), f"{socket.gethostname()} {os.getpid()}")


def process_gone(pid: int) -> bool:
    """No such process, or only its exit status left (a zombie its launcher has not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def lost_ranks(world_size: int) -> tuple[list[int], bool]:
    """The ranks of this launch whose process is gone, as far as this machine can see; and whether it could see
    every rank (those on other machines, or all when the launcher's store is gone, cannot be checked)."""
    try:
        store = launcher_store(timeout=timedelta(seconds=5))
        entries = {rank: store.get(process_key(rank)).decode().split() for rank in range(world_size)} if store else {}
    except (RuntimeError, ValueError):  # the store went with its machine
        return [], False
    host = socket.gethostname()
    lost = [rank for rank, (where, pid) in entries.items() if where == host and process_gone(int(pid))]
    return lost, len(entries) == world_size and all(where == host for where, _ in entries.values())


def is_lost_peer(error: BaseException) -> bool:
    """A collective failed because another process of the group went away (its connection closed or reset)."""
    if isinstance(error, getattr(torch.distributed, "DistNetworkError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("gloo" in text.lower() or "nccl" in text.lower()) and any(
        s in text for s in ("Connection reset", "Connection closed", "Broken pipe", "Connection refused",
                            "Timeout", "timed out", "remote process exited"))


def continue_restarted_run(config: TrainConfig, folder: Path) -> TrainConfig:
    """The options of a launch torch elastic restarted (`--max_restarts`) after a process was lost: the run folder
    of its first attempt, resumed from its latest snapshot (as --resume would), or from the start if it has none."""
    announce = os.environ.get("RANK", "0") == "0"
    try:
        snapshots(folder / "state")
    except StateError:
        if announce:
            LOGGER.warning(f"Restarted by the launcher (restart {restart_count()}): {folder} has no snapshot yet; "
                           f"training it again from the start")
        return replace(config, project=str(folder.parent), name=folder.name, exist_ok=True)
    if announce:
        LOGGER.warning(f"Restarted by the launcher (restart {restart_count()}): resuming {folder} from its latest "
                       f"snapshot")
    return replace(config, resume=str(folder))


class ProcessLost(RuntimeError):
    """Another training process of the launch went away; `report` is False on the survivors that leave the message
    to a lower-ranked one."""

    def __init__(self, message: str, report: bool = True):
        super().__init__(message)
        self.report = report

    @classmethod
    def explain(cls, accelerator: Accelerator, save_dir: Path) -> ProcessLost:
        """What a survivor says: which process is gone, the snapshot kept, how to continue."""
        lost, seen_all = lost_ranks(accelerator.num_processes)
        who = f"training process {', '.join(f'rank {r}' for r in lost)}" if lost else \
            "another training process" + ("" if seen_all else " (on another machine, or its launcher)")
        try:
            kept = f"the latest snapshot, {snapshots(save_dir / 'state')[0].name}, is kept"
        except StateError:
            kept = "no snapshot was saved yet"
        survivors = [r for r in range(accelerator.num_processes) if r not in lost]
        report = not survivors or accelerator.process_index == survivors[0] or not seen_all
        return cls(f"{who} was lost (killed, out of memory, or its machine went away); {kept}. Continue with the "
                   f"same launch command and `train --resume {save_dir}`, or launch with --max_restarts N to "
                   f"continue on its own", report)
