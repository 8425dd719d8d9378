"""Locating and reading the shipped configs (models, hyps, data, accelerate) with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file is missing, malformed or holds unknown keys; the message names the file."""


def config_root() -> Path:
    """The shipped configs/ folder: inside an installed package, else at the top of a source checkout."""
    installed = Path(__file__).resolve().parent / "configs"
    if (installed / "models").is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "configs"


def available(kind: str) -> list[str]:
    """Names of the shipped configs of one kind ('models', 'hyps', 'data', 'accelerate')."""
    return sorted(p.stem for p in (config_root() / kind).glob("*.yaml"))


def resolve_config(name: str | Path, kind: str) -> Path:
    """A path as given if it exists, else a shipped config by name ('yolov5s', 'yolov5s.yaml', 'scratch-low')."""
    path = Path(name)
    if path.is_file():
        return path
    folder = config_root() / kind
    stem = path.name if path.suffix in ("", ".yml", ".yaml") else None
    if stem is not None:
        stem = Path(stem).stem if path.suffix else stem
        for candidate in (stem, f"hyp.{stem}"):
            shipped = folder / f"{candidate}.yaml"
            if shipped.is_file():
                return shipped
    raise ConfigError(f"{name}: no such file, and not a shipped {kind} config "
                      f"(available: {', '.join(available(kind))})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping safely (no object construction); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def check_keys(data: dict[str, Any], allowed: set[str], required: set[str], source: str) -> None:
    """Raise on keys outside `allowed` or missing from `required`, naming `source`."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(map(repr, missing))}")
