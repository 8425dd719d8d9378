"""Weights files: safetensors with enough metadata in the header to rebuild the model, and Ultralytics .pt imports.

Ultralytics YOLOv5 checkpoints are pickled modules. They are read without running any code from them: a
restricted unpickler admits only the globals such checkpoints contain (tensor rebuild functions, containers,
numpy scalars/arrays and paths). Every Ultralytics or torch.nn class becomes an inert stand-in that only holds
the attributes it was pickled with; parameters and buffers are read out of those and loaded into our own
DetectionModel. Anything else (os.system, builtins.eval, ...) is refused before it can be called.
"""

from __future__ import annotations

import _compat_pickle
import collections
import json
import pathlib
import pickle
import types
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .files import atomic_write
from .model.yolo import DetectionModel

FORMAT = "yolo-accel"
FORMAT_VERSION = 1


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model; the message names the file."""


def save_weights(model: DetectionModel, path: str | Path, names: list[str] | None = None,
                 extra: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write the model's state dict and metadata (yaml, nc, names, stride, format version, `extra`); with `half`,
    floating-point tensors in fp16 (half the file, as YOLOv5 strips its weights; load_model gives fp32 back)."""
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
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        metadata["dtype"] = "float16"
    # bytes written by us: the file gets the umask's permissions (safetensors' own writer makes 0600)
    atomic_write(path, lambda tmp: tmp.write_bytes(save(state, metadata=metadata)), durable=True)
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
    version = metadata.get("format_version", "0")
    if not version.isdigit():
        raise WeightsError(f"{path}: format_version {version[:40]!r} in the header is not a number")
    if int(version) > FORMAT_VERSION:
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


# Ultralytics .pt import

# modules of YOLOv5 (models.*), its pip package, Ultralytics 8 (ultralytics.nn.*: YOLOv5u checkpoints) and torch
STAND_IN_PREFIXES = ("models.", "yolov5.models.", "ultralytics.nn.", "torch.nn.modules.")
TORCH_DTYPES = {"float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "uint8", "int16",
                "int32", "int64", "long", "int", "bool", "complex64", "complex128"}


class UnsafeCheckpointError(WeightsError):
    """The checkpoint names a global outside the allow-list; nothing from it was called."""


class StandIn:
    """Takes the place of a pickled class; keeps its state as plain attributes and has no behaviour."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


def _inert_call(*args: Any, **kwargs: Any) -> StandIn:
    return StandIn(*args, **kwargs)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),  # protocol-2 bytes
        ("pathlib", "PosixPath"): pathlib.PurePosixPath,
        ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
    }
    allowed.update({("torch", name): getattr(torch, name) for name in TORCH_DTYPES})
    for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # best_fitness is an ndarray
        allowed[(numpy_core, "_reconstruct")] = _inert_call
        allowed[(numpy_core, "scalar")] = _inert_call
    allowed[("numpy", "ndarray")] = StandIn
    allowed[("numpy", "dtype")] = StandIn
    return allowed


ALLOWED = _allowed_globals()
_stand_ins: dict[str, type[StandIn]] = {}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles name Python 2 modules (__builtin__, copy_reg); map them as pickle itself would
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        qualified = f"{module}.{name}"
        if qualified.startswith(STAND_IN_PREFIXES) and name.isidentifier():
            if qualified not in _stand_ins:
                _stand_ins[qualified] = type(name, (StandIn,), {"qualified_name": qualified})
            return _stand_ins[qualified]
        raise UnsafeCheckpointError(f"refused global {qualified!r}: not something a YOLOv5 checkpoint contains")


def _restricted_load(file, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load takes a pickle *module*: it subclasses our Unpickler (adding storage handling) and calls our load
restricted_pickle = types.ModuleType("yolo_accel_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.__name__ = "yolo_accel_restricted_pickle"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Unpickle an Ultralytics checkpoint with the restricted unpickler; raises UnsafeCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except RecursionError:
        raise WeightsError(f"{path}: refused: the pickle nests deeper than any checkpoint does") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as err:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), StandIn):
        raise WeightsError(f"{path}: not a YOLOv5 checkpoint (expected a dict with a pickled 'model')")
    return ckpt


MAX_MODULE_DEPTH = 32  # YOLOv5 models nest 5 deep


def module_state_dict(module: StandIn, prefix: str = "", _path: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a stand-in module tree, keyed like nn.Module.state_dict(); a module
    that contains itself, or nesting past MAX_MODULE_DEPTH, is refused (WeightsError)."""
    if id(module) in _path or len(_path) > MAX_MODULE_DEPTH:
        raise WeightsError(f"refused: the pickled modules form a cycle or nest too deep (at {prefix or 'the top'})")
    state: dict[str, torch.Tensor] = {}
    skip = getattr(module, "_non_persistent_buffers_set", ())
    skip = set(skip) if isinstance(skip, (set, frozenset, list, tuple)) else set()
    tensors = {}
    for table in ("_parameters", "_buffers"):
        entries = getattr(module, table, {})
        if isinstance(entries, dict):
            tensors.update(entries)
    for name, value in tensors.items():
        if isinstance(name, str) and isinstance(value, torch.Tensor) and name not in skip:
            state[prefix + name] = value.detach()
    children = getattr(module, "_modules", {})
    for name, child in (children.items() if isinstance(children, dict) else ()):
        if isinstance(child, StandIn):
            state.update(module_state_dict(child, f"{prefix}{name}.", (*_path, id(module))))
    return state


def import_ultralytics(path: str | Path) -> tuple[DetectionModel, list[str], dict[str, Any]]:
    """(model in fp32, class names, info) from an Ultralytics YOLOv5 checkpoint; EMA weights when present."""
    ckpt = read_checkpoint(path)
    source = ckpt.get("ema") if isinstance(ckpt.get("ema"), StandIn) else ckpt["model"]
    cfg = getattr(source, "yaml", None)
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: the pickled model has no yaml dict to rebuild it from")
    model = DetectionModel(cfg, source=f"{path} (model yaml)")
    try:
        tensors = module_state_dict(source)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    load_state_dict_checked(model, state, str(path))
    names = getattr(source, "names", None)
    if isinstance(names, dict):
        if any(type(k) is not int for k in names) or set(names) != set(range(len(names))):
            raise WeightsError(f"{path}: class names are a dict whose keys are not 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    names = check_names([str(n) for n in names] if isinstance(names, (list, tuple)) else None, model.nc, str(path))
    epoch = ckpt.get("epoch")
    info = {"source": Path(path).name, "epoch": epoch if isinstance(epoch, int) else None,
            "weights": "ema" if source is ckpt.get("ema") else "model"}
    return model, names, info
