"""Model registry (timm style): factories register by name; ``create_model`` builds one with overrides."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from octformer.errors import OctformerError

__all__ = ["register_model", "create_model", "list_models", "is_model"]

_MODELS: dict[str, Callable[..., Any]] = {}
_MODULES = ("volt", "hotformerloc", "octgpt")  # model modules whose factories register on import


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: register a factory under its function name (lowercase, ends in a size)."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise OctformerError(f"register_model: a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def _ensure_loaded() -> None:
    """Import the model modules so their factories are registered."""
    import importlib

    for module in _MODULES:
        importlib.import_module(f"octformer.models.{module}")


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    """True when ``name`` is a registered model."""
    _ensure_loaded()
    return name in _MODELS


def create_model(name: str, **overrides: Any) -> Any:
    """Build the registered model ``name``; keyword ``overrides`` replace its config entries."""
    _ensure_loaded()
    if not isinstance(name, str) or name not in _MODELS:
        raise OctformerError(f"name: expected one of {sorted(_MODELS)}, got {name!r}")
    return _MODELS[name](**overrides)
