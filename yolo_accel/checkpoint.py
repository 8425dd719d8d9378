"""Model weights as safetensors: tensors plus enough metadata in the header to rebuild the model from the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import atomic_write
from .model.yolo import DetectionModel

FORMAT = "yolo-accel"
FORMAT_VERSION = 1


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model; the message names the file."""


def save_weights(model: DetectionModel, path: str | Path, names: list[str] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the model's state dict and metadata (yaml, nc, names, stride, format version, `extra`)."""
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_yaml": json.dumps(model.yaml),
        "nc": str(model.nc),
        "names": json.dumps(list(names if names is not None else model.names)),
        "stride": json.dumps(model.stride.tolist()),
    }
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a yolo-accel safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"{path}: no {FORMAT} metadata in the header (write it with save_weights, or import "
                           f"an Ultralytics .pt with `yolo-accel convert`)")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise WeightsError(f"{path}: format version {metadata['format_version']} is newer than this yolo-accel "
                           f"reads ({FORMAT_VERSION}); upgrade yolo-accel")
    return state, metadata


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise WeightsError naming every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"{source}: weights do not fit the model; " + "; ".join(problems))


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    check_state_dict(model, state, source)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def check_names(names: Any, nc: int, source: str) -> list[str]:
    """Class names from a file, as a list of nc strings (indices when the file has none); WeightsError otherwise."""
    if names is None:
        return [str(i) for i in range(nc)]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{source}: class names must be a list of strings, got {type(names).__name__}")
    if len(names) != nc:
        raise WeightsError(f"{source}: {len(names)} class names for a model with nc={nc}")
    return names


def _json_field(metadata: dict[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(metadata.get(key, "null"))
    except json.JSONDecodeError as err:
        raise WeightsError(f"{source}: header field '{key}' is not valid JSON ({err})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DetectionModel:
    """Rebuild a model from a .safetensors file written by save_weights, or import an Ultralytics .pt."""
    path = Path(path)
    if path.suffix == ".pt":
        from .ultralytics_import import import_ultralytics

        model, names, _ = import_ultralytics(path)
        model.names = names
        return model.to(device)
    state, metadata = read_weights(path)
    model = DetectionModel(_json_field(metadata, "model_yaml", str(path)), source=str(path))
    load_state_dict_checked(model, state, str(path))
    model.names = check_names(_json_field(metadata, "names", str(path)), model.nc, str(path))
    return model.to(device)


def read_any_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str] | None]:
    """(state dict, model yaml, class names) from a yolo-accel .safetensors or an Ultralytics .pt."""
    path = Path(path)
    if path.suffix == ".pt":
        from .ultralytics_import import import_ultralytics

        model, names, _ = import_ultralytics(path)
        return model.state_dict(), model.yaml, names
    state, metadata = read_weights(path)
    model_yaml = _json_field(metadata, "model_yaml", str(path))
    names = _json_field(metadata, "names", str(path))
    return state, model_yaml, None if names is None else check_names(names, len(names), str(path))


def transfer_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], exclude: tuple[str, ...] = ()) -> int:
    """Load every key whose name and shape match (and contains none of `exclude`); returns how many."""
    own = model.state_dict()
    matched = {k: v.to(own[k].dtype) for k, v in state.items()
               if k in own and v.shape == own[k].shape and not any(x in k for x in exclude)}
    model.load_state_dict(matched, strict=False)
    return len(matched)
