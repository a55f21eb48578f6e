"""``octformer train``: configs, the DDP-ready trainer with exact resume, and the tiny default run."""

from octformer.train.config import apply_overrides, load_config, shipped_configs
from octformer.train.trainer import Trainer, atomic_save, latest_checkpoint, train

__all__ = ["Trainer", "train", "load_config", "apply_overrides", "shipped_configs", "atomic_save", "latest_checkpoint"]
