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

# --- serialization and flattening plans (octformer.serialize) ---
def serialize(
    grid_coords: npt.NDArray[np.int64],
    orders: list[str],
    depth: int | None = None,
    batch: npt.NDArray[np.int64] | None = None,
    num_threads: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], int]: ...
def curve_encode(
    grid_coords: npt.NDArray[np.int64], order: str, depth: int, num_threads: int | None = None
) -> npt.NDArray[np.int64]: ...
def curve_decode(
    codes: npt.NDArray[np.int64], order: str, depth: int, num_threads: int | None = None
) -> npt.NDArray[np.int64]: ...
def flatten_windows(
    grid_coords: npt.NDArray[np.int64],
    window: tuple[int, int, int],
    group_size: int,
    axis: str = "x",
    shift: bool = False,
    batch: npt.NDArray[np.int64] | None = None,
    num_threads: int | None = None,
) -> dict[str, object]: ...
def plan_from_perm(
    perm: npt.NDArray[np.int64],
    group_size: int,
    batch: npt.NDArray[np.int64] | None = None,
    num_threads: int | None = None,
) -> dict[str, object]: ...
