"""YAML run configs: the shipped ones (``octformer/configs/*.yaml``), files, and ``key.sub=value`` overrides."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from octformer.errors import OctformerError

__all__ = ["load_config", "shipped_configs", "apply_overrides", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "tiny"


def _yaml():
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise OctformerError("octformer train needs PyYAML: pip install 'octformer[train]'") from exc
    return yaml


def shipped_configs() -> list[str]:
    """Names of the configs inside the package (``octformer train NAME``)."""
    folder = resources.files("octformer") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> dict:
    """The config dict for a shipped name or a YAML path, with ``_base_`` files merged and overrides applied."""
    yaml = _yaml()
    name = name_or_path or DEFAULT_CONFIG
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise OctformerError(f"config: expected an existing YAML file or one of {shipped_configs()}, got {name!r}")
        text, origin = path.read_text(), path
    else:
        if name not in shipped_configs():
            raise OctformerError(f"config: expected a YAML file or one of {shipped_configs()}, got {name!r}")
        text, origin = (resources.files("octformer") / "configs" / f"{name}.yaml").read_text(), None
    cfg = yaml.safe_load(text) or {}
    if not isinstance(cfg, dict):
        raise OctformerError(f"config {name!r}: expected a mapping at the top level, got {type(cfg).__name__}")
    base = cfg.pop("_base_", None)
    if base:
        base_ref = str((origin.parent / base)) if origin is not None and (origin.parent / base).exists() else base
        cfg = _merge(load_config(base_ref), cfg)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    """Set ``a.b.c=value`` entries (value parsed as YAML: numbers, booleans, lists, null)."""
    yaml = _yaml()
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise OctformerError(f"override: expected KEY=VALUE such as train.lr=0.001, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw)
    return out
