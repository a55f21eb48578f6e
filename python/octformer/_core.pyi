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
    fill_batch: bool = True,
) -> dict[str, object]: ...
def build_single(
    points: object,
    depth: int,
    full_depth: int,
    bbox: object,
    clip: bool = False,
    num_threads: int | None = None,
) -> (
    tuple[
        list[npt.NDArray[np.int64]],
        list[npt.NDArray[np.int32]],
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.int32] | None,
    ]
    | None
): ...
def auto_boxes(
    points: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    offsets: npt.NDArray[np.int64],
    cube: bool = True,
    num_threads: int | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]: ...
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
def neighbors_root(
    root_children: npt.NDArray[np.int32], rows_all: bool = False, entries_all: bool = False, periodic_y: bool = False
) -> npt.NDArray[np.int32]: ...
def neighbors_step(
    parent_table: npt.NDArray[np.int32],
    parent_children: npt.NDArray[np.int32],
    children: npt.NDArray[np.int32],
    rows_all: bool = False,
    entries_all: bool = False,
    num_threads: int | None = None,
) -> npt.NDArray[np.int32]: ...
def merge_trees(
    keys: list[list[npt.NDArray[np.int64]]],
    children: list[list[npt.NDArray[np.int32]]],
    batch: list[list[npt.NDArray[np.int32]] | None],
    nonempty: list[list[int]],
    point_leaf: list[npt.NDArray[np.int64]],
    batch_sizes: list[int],
    num_threads: int | None = None,
) -> tuple[
    list[npt.NDArray[np.int64]], list[npt.NDArray[np.int32]], list[npt.NDArray[np.int32]], npt.NDArray[np.int64]
]: ...
def zeros_f64(rows: int, cols: int) -> npt.NDArray[np.float64]: ...
def lzf_decompress(data: bytes, size: int) -> bytes: ...
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

# --- OCTF format and token views (octformer.format) ---
def octf_encode(tree: object, child_order: str = "xyz_msb", num_threads: int | None = None) -> bytes: ...
def octf_decode(
    data: bytes, max_depth: int | None = None, num_threads: int | None = None, fill_batch: bool = True
) -> dict[str, object]: ...
def octf_decode_levels(data: bytes, max_depth: int | None = None) -> list[npt.NDArray[np.int64]]: ...
def octf_header(data: bytes) -> dict[str, object]: ...
def occupancy_tokens(tree: object) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]: ...
def octree_from_occupancy_tokens(
    tokens: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], depth: int, full_depth: int
) -> dict[str, object]: ...

class OmnitreeCore:
    """Native omnitree (wrapped by octformer.omnitree.Omnitree)."""

    @staticmethod
    def from_preorder(
        dims: int,
        max_level: int,
        masks: npt.NDArray[np.uint8],
        occupied: npt.NDArray[np.uint8],
        origin: npt.NDArray[np.float64],
        cell: npt.NDArray[np.float64],
    ) -> OmnitreeCore: ...
    @staticmethod
    def from_cells(
        cells: npt.NDArray[np.uint32],
        max_level: int,
        rule: str,
        ratio: float,
        origin: npt.NDArray[np.float64],
        cell: npt.NDArray[np.float64],
    ) -> OmnitreeCore: ...
    @staticmethod
    def from_octree(
        children: list[npt.NDArray[np.int32]], depth: int, origin: npt.NDArray[np.float64], cell: npt.NDArray[np.float64]
    ) -> OmnitreeCore: ...
    @staticmethod
    def decode(data: bytes) -> OmnitreeCore: ...
    def encode(self) -> bytes: ...
    @property
    def dims(self) -> int: ...
    @property
    def max_level(self) -> int: ...
    @property
    def masks(self) -> npt.NDArray[np.uint8]: ...
    @property
    def occupied(self) -> npt.NDArray[np.uint8]: ...
    @property
    def origin(self) -> npt.NDArray[np.float64]: ...
    @property
    def cell(self) -> npt.NDArray[np.float64]: ...
    def leaf_cells(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def locate_cells(self, cells: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]: ...
