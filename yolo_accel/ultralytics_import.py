"""Import Ultralytics YOLOv5 .pt checkpoints (pickled modules) without running any code from them.

A restricted unpickler admits only the globals such checkpoints contain: tensor rebuild functions, containers,
numpy scalars/arrays and paths. Every Ultralytics or torch.nn class becomes an inert stand-in that only holds
the attributes it was pickled with; we read parameters and buffers out of those and load them into our own
DetectionModel. Anything else (os.system, builtins.eval, ...) is refused before it can be called.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pathlib
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from .checkpoint import WeightsError, check_names, load_state_dict_checked
from .model.yolo import DetectionModel

STAND_IN_PREFIXES = ("models.", "yolov5.models.", "torch.nn.modules.")
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
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as err:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), StandIn):
        raise WeightsError(f"{path}: not a YOLOv5 checkpoint (expected a dict with a pickled 'model')")
    return ckpt


def module_state_dict(module: StandIn, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a stand-in module tree, keyed like nn.Module.state_dict()."""
    state: dict[str, torch.Tensor] = {}
    skip = set(getattr(module, "_non_persistent_buffers_set", ()))
    for name, value in {**getattr(module, "_parameters", {}), **getattr(module, "_buffers", {})}.items():
        if isinstance(value, torch.Tensor) and name not in skip:
            state[prefix + name] = value.detach()
    for name, child in getattr(module, "_modules", {}).items():
        if isinstance(child, StandIn):
            state.update(module_state_dict(child, f"{prefix}{name}."))
    return state


def import_ultralytics(path: str | Path) -> tuple[DetectionModel, list[str], dict[str, Any]]:
    """(model in fp32, class names, info) from an Ultralytics YOLOv5 checkpoint; EMA weights when present."""
    ckpt = read_checkpoint(path)
    source = ckpt.get("ema") if isinstance(ckpt.get("ema"), StandIn) else ckpt["model"]
    cfg = getattr(source, "yaml", None)
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: the pickled model has no yaml dict to rebuild it from")
    model = DetectionModel(cfg, source=f"{path} (model yaml)")
    state = {k: v.float() if v.is_floating_point() else v for k, v in module_state_dict(source).items()}
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
