"""Backbones as torch nn.Modules: Volt, HOTFormerLoc, OctGPT, built through ``create_model``."""

from octformer.models._registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "list_models", "is_model", "register_model"]
