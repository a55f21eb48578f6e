"""octformer: Rust-accelerated octrees, serialization and attention for sparse 3D point-cloud transformers."""

from octformer._core import __version__
from octformer.errors import CorruptDataError, InternalError, OctformerError, OutOfBoundsError
from octformer.octree import Octree, build_octree, key_to_xyz
from octformer.format import load, save  # OCTF files (octformer.format has encode/decode/token views)
from octformer import serialize  # the module: serialize.serialize, .decode, .encode, .order_for_block
from octformer.serialize import FlattenPlan, Serialization, flatten, patches
from octformer.models import create_model, list_models  # backbones (torch); see octformer.models

__all__ = [
    "__version__",
    "Octree",
    "build_octree",
    "key_to_xyz",
    "save",
    "load",
    "serialize",
    "Serialization",
    "FlattenPlan",
    "flatten",
    "patches",
    "create_model",
    "list_models",
    "show_config",
    "OctformerError",
    "OutOfBoundsError",
    "CorruptDataError",
    "InternalError",
]


def show_config() -> str:
    """Report versions, native thread count and which optional backends are available."""
    import importlib.util

    from octformer import _core

    lines = [f"octformer {__version__}", f"native threads (default): {_core.resolved_num_threads()}"]
    for mod in ("torch", "ocnn", "open3d", "laspy", "octformer_kernels"):
        lines.append(f"{mod}: {'available' if importlib.util.find_spec(mod) else 'not installed'}")
    try:
        from octformer.ops import backend_report  # filled in by the ops package

        lines.extend(backend_report())
    except ImportError:
        pass
    text = "\n".join(lines)
    print(text)
    return text
