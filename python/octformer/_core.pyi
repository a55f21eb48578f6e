"""Type stubs for the native module ``octformer._core`` (hand-written; keep in sync)."""

import numpy as np
import numpy.typing as npt

__version__: str

class OctformerError(ValueError): ...
class OutOfBoundsError(OctformerError): ...
class CorruptDataError(OctformerError): ...
class InternalError(RuntimeError): ...

def build_octree(
    points: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    offsets: npt.NDArray[np.int64],
    origins: npt.NDArray[np.float64],
    cells: npt.NDArray[np.float64],
    depth: int,
    full_depth: int,
    clip: bool = False,
    num_threads: int | None = None,
) -> dict[str, object]: ...
def average_leaf_values(
    values: npt.NDArray[np.float32],
    point_leaf: npt.NDArray[np.int64],
    num_leaves: int,
    normalize: bool = False,
    num_threads: int | None = None,
) -> npt.NDArray[np.float32]: ...
def neighbors(
    keys: list[npt.NDArray[np.int64]],
    children: list[npt.NDArray[np.int32]],
    depth: int,
    nonempty: bool = True,
    periodic_y: bool = False,
    num_threads: int | None = None,
) -> npt.NDArray[np.int32]: ...
def resolved_num_threads(num_threads: int | None = None) -> int: ...
