"""Point-cloud readers and writers (PLY, PCD, LAS/LAZ, KITTI/nuScenes/PointNetVLAD .bin, NumPy, OBJ).

``read_points(path)`` picks the reader from the file name and confirms it from the
content (magic bytes, header fields, sizes); every malformed file raises a named error:

* :class:`UnsupportedFormatError` – the extension or a header feature is not supported;
* :class:`TruncatedFileError` – the payload is shorter than the header (or record size) says;
* :class:`octformer.errors.CorruptDataError` – bad magic, wrong header fields, corrupt stream.

Attribute names are the same across formats: ``intensity``, ``rgb`` (N, 3) uint8 (uint16
for LAS, as stored), ``alpha``, ``normals`` (N, 3), ``classification``, ``label``,
``instance``, ``label_learning``, ``ring``; other fields keep their name from the file.

Raw ``.bin`` files have no header, so the format follows from the name and size:

* ``*.pcd.bin`` is a nuScenes lidar sweep: N×5 float32 (x, y, z, intensity, ring);
* any other ``*.bin`` is a PointNetVLAD submap when its size is exactly 4096×3×8 = 98,304
  bytes and its values read as float64 are finite with the largest magnitude in [0.1, 10]
  (submaps are zero-centred and scaled to [-1, 1]); otherwise it is a KITTI/SemanticKITTI scan, N×4 float32 (x, y, z, remission).
  Pass ``format="kitti"`` / ``"pointnetvlad"`` / ``"nuscenes"`` to skip the guess.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from octformer.errors import CorruptDataError, OctformerError

__all__ = [
    "PointCloud",
    "read_points",
    "write_points",
    "write_ply",
    "write_pcd",
    "write_kitti_bin",
    "read_semantickitti_labels",
    "map_semantickitti_labels",
    "lzf_decompress",
    "lzf_compress_literal",
    "FORMATS",
    "SEMANTICKITTI_LEARNING_MAP",
    "SEMANTICKITTI_CLASSES",
    "SEMANTICKITTI_RAW_NAMES",
    "POINTNETVLAD_NUM_POINTS",
    "UnsupportedFormatError",
    "TruncatedFileError",
]


class UnsupportedFormatError(OctformerError):
    """The file's format (or a feature of its header) is not one octformer reads."""


class TruncatedFileError(CorruptDataError):
    """The file ends before the payload its header (or record size) announces."""


FORMATS = ("ply", "pcd", "las", "kitti", "nuscenes", "pointnetvlad", "npy", "npz", "obj")
POINTNETVLAD_NUM_POINTS = 4096

# SemanticKITTI raw label ids (low 16 bits of a .label entry) and their names.
SEMANTICKITTI_RAW_NAMES: dict[int, str] = {
    0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle",
    16: "on-rails", 18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist",
    32: "motorcyclist", 40: "road", 44: "parking", 48: "sidewalk", 49: "other-ground",
    50: "building", 51: "fence", 52: "other-structure", 60: "lane-marking", 70: "vegetation",
    71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign", 99: "other-object",
    252: "moving-car", 253: "moving-bicyclist", 254: "moving-person", 255: "moving-motorcyclist",
    256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck", 259: "moving-other-vehicle",
}
# The standard 19-class single-scan learning map (0 = ignored); moving classes fold into static ones.
SEMANTICKITTI_CLASSES: tuple[str, ...] = (
    "unlabeled", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
    "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence",
    "vegetation", "trunk", "terrain", "pole", "traffic-sign",
)
SEMANTICKITTI_LEARNING_MAP: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9,
    44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19,
    99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}


@dataclass
class PointCloud:
    """Points plus per-point attributes as read from one file.

    ``points`` is (N, 3) float32 or float64 (the file's precision); every array in
    ``attributes`` has N rows; ``meta`` holds header facts (organized width/height,
    viewpoint, element counts, LAS scale/offset, label path …).
    """

    points: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None
    format: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """(3,) min and (3,) max of the finite points (NaN rows of organized clouds ignored)."""
        pts = self.points[np.isfinite(self.points).all(axis=1)]
        if pts.shape[0] == 0:
            raise OctformerError("points: the cloud has no finite points, so it has no bounding box")
        return pts.min(axis=0), pts.max(axis=0)

    def select(self, mask: np.ndarray) -> PointCloud:
        """A new cloud with the rows where ``mask`` is true (points and every attribute)."""
        return PointCloud(
            self.points[mask], {k: v[mask] for k, v in self.attributes.items()}, self.path, self.format, dict(self.meta)
        )


# ============================================================================ dispatch


def _detect_format(path: Path, data: bytes) -> str:
    name = path.name.lower()
    if name.endswith(".pcd.bin"):
        return "nuscenes"
    ext = path.suffix.lower()
    by_ext = {".ply": "ply", ".pcd": "pcd", ".las": "las", ".laz": "las", ".npy": "npy", ".npz": "npz", ".obj": "obj"}
    if ext in by_ext:
        return by_ext[ext]
    if ext == ".bin":
        return "pointnetvlad" if _looks_like_pointnetvlad(data) else "kitti"
    if ext == ".label":
        raise UnsupportedFormatError(
            f"path: {path} is a SemanticKITTI label file, not a point cloud; "
            "use read_semantickitti_labels() or read the matching velodyne .bin"
        )
    raise UnsupportedFormatError(
        f"path: cannot tell the point-cloud format of {path.name!r} from its extension "
        f"{ext or '(none)'!r}; expected .ply .pcd .las .laz .bin .pcd.bin .npy .npz .obj, or pass format= one of {FORMATS}"
    )


def _looks_like_pointnetvlad(data: bytes) -> bool:
    """The documented rule: exactly 4096×3 float64, all finite, largest magnitude in [0.1, 10]."""
    if len(data) != POINTNETVLAD_NUM_POINTS * 3 * 8:
        return False
    vals = np.frombuffer(data, dtype="<f8")
    if not np.isfinite(vals).all():
        return False
    peak = float(np.abs(vals).max())
    return 0.1 <= peak <= 10.0


def read_points(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    keep_invalid: bool = False,
    labels: str | os.PathLike | bool | None = "auto",
) -> PointCloud:
    """Read a point cloud file into a :class:`PointCloud`, choosing the reader by name and content.

    Args:
        path: the file (.ply, .pcd, .las/.laz, .bin, .pcd.bin, .npy, .npz, .obj).
        format: force a reader, one of ``FORMATS``, instead of guessing from the name.
        keep_invalid: PCD only: keep points with NaN/Inf coordinates (organized clouds mark
            invalid pixels that way) instead of dropping them; ``meta["num_invalid"]`` counts them.
        labels: KITTI only: ``"auto"`` loads ``<stem>.label`` beside the scan or in
            ``../labels/`` when one exists, True requires one there, a path loads that
            file, False/None loads none. Labels add ``label`` (raw id), ``instance`` and
            ``label_learning`` (0..19 via ``SEMANTICKITTI_LEARNING_MAP``).
    """
    p = Path(os.fspath(path))
    if format is not None and format not in FORMATS:
        raise UnsupportedFormatError(f"format: expected one of {FORMATS}, got {format!r}")
    if not p.exists():
        raise FileNotFoundError(f"path: no such file: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"path: expected a file, got the directory {p}")
    if format == "las" or (format is None and p.suffix.lower() in (".las", ".laz")):
        cloud = _read_las(p)
    else:
        data = p.read_bytes()
        fmt = format or _detect_format(p, data)
        if fmt == "ply":
            cloud = _read_ply(data)
        elif fmt == "pcd":
            cloud = _read_pcd(data, keep_invalid)
        elif fmt == "kitti":
            cloud = _read_kitti(p, data, labels)
        elif fmt == "nuscenes":
            cloud = _read_nuscenes(data)
        elif fmt == "pointnetvlad":
            cloud = _read_pointnetvlad(data)
        elif fmt == "npy":
            cloud = _read_npy(data)
        elif fmt == "npz":
            cloud = _read_npz(p)
        else:
            cloud = _read_obj(data)
        cloud.format = fmt
    cloud.path = p
    return cloud


# ============================================================================ PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_MAX_HEADER = 1 << 20


@dataclass
class _PlyElement:
    name: str
    count: int
    props: list[tuple[str, str, str | None]]  # (name, value type, list count type or None)

    @property
    def has_lists(self) -> bool:
        return any(p[2] is not None for p in self.props)


def _header_lines(data: bytes, end_token: bytes, what: str) -> tuple[list[str], int]:
    """Split an ASCII header into lines up to and including the one starting with ``end_token``."""
    lines, pos = [], 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0 or nl > _MAX_HEADER:
            raise TruncatedFileError(f"{what}: the header never ends (no {end_token.decode()!r} line)")
        raw = data[pos:nl].rstrip(b"\r")
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise CorruptDataError(f"{what}: header line {len(lines) + 1} is not ASCII text") from exc
        lines.append(line)
        pos = nl + 1
        if line.split()[:1] == [end_token.decode()]:
            return lines, pos


def _parse_ply_header(data: bytes) -> tuple[str, list[_PlyElement], dict, int]:
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise CorruptDataError(f"PLY: expected the magic line 'ply', got {data[:8]!r}")
    lines, body = _header_lines(data, b"end_header", "PLY")
    fmt, elements, comments = None, [], []
    for i, line in enumerate(lines[1:-1], start=2):
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            if parts:
                comments.append(line.split(None, 1)[1] if len(parts) > 1 else "")
            continue
        if parts[0] == "format":
            if len(parts) != 3 or parts[1] not in _PLY_FORMATS:
                raise CorruptDataError(f"PLY header line {i}: expected 'format ascii|binary_little_endian|binary_big_endian 1.0', got {line!r}")
            fmt = parts[1]
        elif parts[0] == "element":
            if len(parts) != 3 or not parts[2].isdigit():
                raise CorruptDataError(f"PLY header line {i}: expected 'element NAME COUNT', got {line!r}")
            elements.append(_PlyElement(parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            if not elements:
                raise CorruptDataError(f"PLY header line {i}: property before any element: {line!r}")
            if len(parts) == 5 and parts[1] == "list":
                ct, vt = parts[2], parts[3]
                if ct not in _PLY_TYPES or vt not in _PLY_TYPES or _PLY_TYPES[ct][0] == "f":
                    raise CorruptDataError(f"PLY header line {i}: bad list property types in {line!r}")
                elements[-1].props.append((parts[4], _PLY_TYPES[vt], _PLY_TYPES[ct]))
            elif len(parts) == 3 and parts[1] in _PLY_TYPES:
                elements[-1].props.append((parts[2], _PLY_TYPES[parts[1]], None))
            else:
                raise CorruptDataError(f"PLY header line {i}: expected 'property TYPE NAME' with a known type, got {line!r}")
        else:
            raise CorruptDataError(f"PLY header line {i}: unknown keyword {parts[0]!r}")
    if fmt is None:
        raise CorruptDataError("PLY: the header has no 'format' line")
    return fmt, elements, {"comments": comments}, body


def _read_ply(data: bytes) -> PointCloud:
    fmt, elements, meta, pos = _parse_ply_header(data)
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise CorruptDataError(f"PLY: expected a 'vertex' element, got elements {names}")
    meta["elements"] = {e.name: e.count for e in elements}
    meta["ply_format"] = fmt
    vertex = elements[names.index("vertex")]
    if vertex.has_lists:
        raise UnsupportedFormatError("PLY: list properties on the 'vertex' element are not supported")
    prop_names = [p[0] for p in vertex.props]
    for axis in "xyz":
        if axis not in prop_names:
            raise CorruptDataError(f"PLY: the vertex element has no '{axis}' property (properties: {prop_names})")
    if fmt == "ascii":
        columns = _ply_ascii_vertices(data[pos:], elements, vertex)
    else:
        columns = _ply_binary_vertices(data, pos, elements, vertex, _PLY_FORMATS[fmt])
    return _cloud_from_columns(columns, meta, normal_names=("nx", "ny", "nz"))


def _ply_binary_vertices(data: bytes, pos: int, elements: list[_PlyElement], vertex: _PlyElement, bo: str) -> dict:
    columns: dict[str, np.ndarray] = {}
    for el in elements:
        if not el.has_lists:
            dt = np.dtype([(n, bo + t) for n, t, _ in el.props])
            need = el.count * dt.itemsize
            if pos + need > len(data):
                raise TruncatedFileError(
                    f"PLY: element {el.name!r} needs {need} bytes ({el.count} rows), only {len(data) - pos} left"
                )
            if el is vertex:
                rec = np.frombuffer(data, dtype=dt, count=el.count, offset=pos)
                columns = {n: rec[n].astype(rec[n].dtype.newbyteorder("=")) for n in rec.dtype.names}
            pos += need
        else:
            pos = _skip_ply_list_element(data, pos, el, bo)
    return columns


def _skip_ply_list_element(data: bytes, pos: int, el: _PlyElement, bo: str) -> int:
    """Walk over an element with list properties (faces, range_grid) and return the end offset."""
    n = len(data)
    if len(el.props) == 1 and el.count > 0:
        _, vt, ct = el.props[0]
        csize, vsize = np.dtype(ct).itemsize, np.dtype(vt).itemsize
        if pos + csize > n:
            raise TruncatedFileError(f"PLY: element {el.name!r} starts past the end of the file")
        first = int(np.frombuffer(data, dtype=bo + ct, count=1, offset=pos)[0])
        row = csize + first * vsize
        if first >= 0 and pos + el.count * row <= n:
            # fast path: every row has the same length (triangle meshes)
            if first > 0:
                row_dt = np.dtype([("n", bo + ct), ("v", bo + vt, (first,))])
                counts = np.frombuffer(data, dtype=row_dt, count=el.count, offset=pos)["n"]
            else:
                counts = np.frombuffer(data, dtype=bo + ct, count=el.count, offset=pos)
            if np.all(counts == first):
                return pos + el.count * row
    fmts = [(struct.calcsize(bo + _STRUCT[t]), bo + _STRUCT[c] if c else None, np.dtype(t).itemsize) for _, t, c in el.props]
    for _ in range(el.count):
        for size, cfmt, isize in fmts:
            if cfmt is None:
                pos += size
            else:
                if pos + struct.calcsize(cfmt) > n:
                    raise TruncatedFileError(f"PLY: element {el.name!r} ends early (file is {n} bytes)")
                (k,) = struct.unpack_from(cfmt, data, pos)
                if k < 0:
                    raise CorruptDataError(f"PLY: negative list length {k} in element {el.name!r}")
                pos += struct.calcsize(cfmt) + k * isize
    if pos > n:
        raise TruncatedFileError(f"PLY: element {el.name!r} needs {pos} bytes, the file has {n}")
    return pos


_STRUCT = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "f4": "f", "f8": "d"}


def _ply_ascii_vertices(body: bytes, elements: list[_PlyElement], vertex: _PlyElement) -> dict:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CorruptDataError("PLY: the ascii body contains non-ASCII bytes") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    needed = sum(e.count for e in elements)
    if len(lines) < needed:
        raise TruncatedFileError(f"PLY: the header announces {needed} data lines, the file has {len(lines)}")
    start = 0
    columns: dict[str, np.ndarray] = {}
    for el in elements:
        if el is vertex:
            rows = lines[start : start + el.count]
            nprop = len(el.props)
            try:
                values = np.array(" ".join(rows).split(), dtype=np.float64)
            except ValueError as exc:
                raise CorruptDataError(f"PLY: non-numeric value in the vertex rows: {exc}") from exc
            if values.size != el.count * nprop:
                bad = next((i for i, r in enumerate(rows) if len(r.split()) != nprop), -1)
                raise CorruptDataError(
                    f"PLY: vertex row {bad} has {len(rows[bad].split())} values, expected {nprop}"
                )
            values = values.reshape(el.count, nprop)
            columns = {n: values[:, j].astype(t) for j, (n, t, _) in enumerate(el.props)}
        else:
            _check_ply_ascii_rows(lines[start : start + el.count], el)
        start += el.count
    return columns


def _check_ply_ascii_rows(rows: list[str], el: _PlyElement) -> None:
    """Check each row of a skipped ascii element (faces, range_grid) has the values its properties need."""
    for i, row in enumerate(rows):
        tokens = row.split()
        pos = 0
        try:
            for _, _, ct in el.props:
                pos += 1 + (int(tokens[pos]) if ct is not None else 0)
        except (IndexError, ValueError):
            pos = -1
        if pos != len(tokens):
            raise CorruptDataError(f"PLY: row {i} of element {el.name!r} does not match its properties: {row[:80]!r}")


# ============================================================================ PCD

_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8",
              ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8"}
_PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")


def _parse_pcd_header(data: bytes) -> tuple[dict, np.dtype, int, int]:
    first = data[:64].lstrip()
    if not (first.startswith(b"#") or first.startswith(b"VERSION") or first.startswith(b"FIELDS")):
        raise CorruptDataError(f"PCD: expected a '# .PCD' comment or a VERSION line first, got {data[:16]!r}")
    lines, pos = _header_lines(data, b"DATA", "PCD")
    header: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        key = parts[0].upper()
        if key not in _PCD_KEYS:
            raise CorruptDataError(f"PCD: unknown header keyword {parts[0]!r}")
        header[key] = parts[1:]
    for key in ("FIELDS", "SIZE", "TYPE", "WIDTH", "POINTS", "DATA"):
        if key not in header:
            raise CorruptDataError(f"PCD: the header has no {key} line")
    fields = header["FIELDS"]
    nf = len(fields)
    counts = header.get("COUNT", ["1"] * nf)
    for key, vals in (("SIZE", header["SIZE"]), ("TYPE", header["TYPE"]), ("COUNT", counts)):
        if len(vals) != nf:
            raise CorruptDataError(f"PCD: {key} has {len(vals)} entries, expected one per field ({nf}: {fields})")
    try:
        sizes = [int(s) for s in header["SIZE"]]
        counts_i = [int(c) for c in counts]
        width = int(header["WIDTH"][0])
        height = int(header.get("HEIGHT", ["1"])[0])
        npts = int(header["POINTS"][0])
    except (ValueError, IndexError) as exc:
        raise CorruptDataError(f"PCD: SIZE/COUNT/WIDTH/HEIGHT/POINTS must be integers: {exc}") from exc
    if width < 0 or height < 1 or npts < 0 or any(c < 1 for c in counts_i):
        raise CorruptDataError(f"PCD: expected WIDTH >= 0, HEIGHT >= 1, POINTS >= 0, COUNT >= 1, got {width}, {height}, {npts}, {counts_i}")
    if width * height != npts:
        raise CorruptDataError(f"PCD: POINTS is {npts} but WIDTH×HEIGHT is {width}×{height} = {width * height}")
    dts = []
    seen = set()
    for i, (f, s, t, c) in enumerate(zip(fields, sizes, header["TYPE"], counts_i)):
        if (t.upper(), s) not in _PCD_TYPES:
            raise CorruptDataError(f"PCD: field {f!r} has TYPE {t} SIZE {s}, expected F4/F8/U1/U2/U4/U8/I1/I2/I4/I8")
        name = f if f not in seen else f"{f}_{i}"
        seen.add(name)
        base = "<" + _PCD_TYPES[(t.upper(), s)]
        dts.append((name, base, (c,)) if c > 1 else (name, base))
    mode = header["DATA"][0].lower() if header["DATA"] else ""
    if mode not in ("ascii", "binary", "binary_compressed"):
        raise UnsupportedFormatError(f"PCD: DATA must be ascii, binary or binary_compressed, got {header['DATA']}")
    meta = {"width": width, "height": height, "organized": height > 1, "data": mode, "fields": fields}
    if "VIEWPOINT" in header:
        try:
            meta["viewpoint"] = [float(v) for v in header["VIEWPOINT"]]
        except ValueError as exc:
            raise CorruptDataError(f"PCD: VIEWPOINT must be 7 numbers, got {header['VIEWPOINT']}") from exc
    return meta, np.dtype(dts), npts, pos


def _read_pcd(data: bytes, keep_invalid: bool) -> PointCloud:
    meta, dt, npts, pos = _parse_pcd_header(data)
    mode = meta["data"]
    if mode == "binary":
        need = npts * dt.itemsize
        if len(data) - pos < need:
            raise TruncatedFileError(f"PCD: binary payload needs {need} bytes ({npts} points), only {len(data) - pos} left")
        rec = np.frombuffer(data, dtype=dt, count=npts, offset=pos)
        columns = {n: np.array(rec[n]) for n in dt.names}
    elif mode == "binary_compressed":
        if len(data) - pos < 8:
            raise TruncatedFileError("PCD: binary_compressed payload is missing its 8-byte size header")
        csize, usize = struct.unpack_from("<II", data, pos)
        if usize != npts * dt.itemsize:
            raise CorruptDataError(
                f"PCD: binary_compressed says {usize} uncompressed bytes, expected {npts} points × {dt.itemsize} = {npts * dt.itemsize}"
            )
        if len(data) - pos - 8 < csize:
            raise TruncatedFileError(f"PCD: compressed stream needs {csize} bytes, only {len(data) - pos - 8} left")
        raw = lzf_decompress(data[pos + 8 : pos + 8 + csize], usize)
        columns, off = {}, 0
        for n in dt.names:  # column-major: all of field 0, then all of field 1, ...
            sub = dt[n]
            columns[n] = np.frombuffer(raw, dtype=sub.base, count=npts * (sub.itemsize // sub.base.itemsize), offset=off).reshape(
                (npts,) + sub.shape
            ).copy()
            off += npts * sub.itemsize
    else:
        columns = _pcd_ascii(data[pos:], dt, npts)
    cloud = _cloud_from_columns(columns, meta, normal_names=("normal_x", "normal_y", "normal_z"), packed_rgb=True)
    valid = np.isfinite(cloud.points).all(axis=1)
    cloud.meta["num_invalid"] = int(valid.size - valid.sum())
    if not keep_invalid and cloud.meta["num_invalid"]:
        cloud = cloud.select(valid)
    return cloud


def _pcd_ascii(body: bytes, dt: np.dtype, npts: int) -> dict:
    try:
        rows = [ln for ln in body.decode("ascii").splitlines() if ln.strip()]
    except UnicodeDecodeError as exc:
        raise CorruptDataError("PCD: the ascii body contains non-ASCII bytes") from exc
    if len(rows) < npts:
        raise TruncatedFileError(f"PCD: POINTS says {npts}, the ascii body has {len(rows)} rows")
    rows = rows[:npts]
    width = sum(int(np.prod(dt[n].shape)) for n in dt.names)
    try:
        values = np.array(" ".join(rows).split(), dtype=np.float64)
    except ValueError as exc:
        raise CorruptDataError(f"PCD: non-numeric value in the ascii body: {exc}") from exc
    if values.size != npts * width:
        bad = next((i for i, r in enumerate(rows) if len(r.split()) != width), -1)
        raise CorruptDataError(f"PCD: ascii row {bad} has {len(rows[bad].split())} values, expected {width}")
    values = values.reshape(npts, width)
    columns, col = {}, 0
    for n in dt.names:
        sub = dt[n]
        k = int(np.prod(sub.shape))
        block = values[:, col : col + k]
        columns[n] = (block[:, 0] if not sub.shape else block).astype(sub.base.newbyteorder("="))
        col += k
    return columns


def lzf_decompress(stream: bytes, size: int) -> bytes:
    """Decode an LZF stream (PCD ``binary_compressed``) that must expand to exactly ``size`` bytes.

    Runs natively (octformer-core's checked decoder); raises ``CorruptDataError`` on any
    overrun, a reference before the start, or a size mismatch.
    """
    from octformer import _core

    if size < 0:
        raise CorruptDataError(f"LZF: expected a non-negative uncompressed size, got {size}")
    return _core.lzf_decompress(bytes(stream), int(size))


def lzf_compress_literal(raw: bytes) -> bytes:
    """A valid LZF stream made of literal runs only (no compression; for writing binary_compressed PCD)."""
    a = np.frombuffer(bytes(raw), dtype=np.uint8)
    full, rest = divmod(a.size, 32)
    body = np.empty((full, 33), dtype=np.uint8)
    body[:, 0] = 31
    body[:, 1:] = a[: full * 32].reshape(full, 32)
    out = body.tobytes()
    if rest:
        out += bytes([rest - 1]) + a[full * 32 :].tobytes()
    return out


# ============================================================================ shared column handling


def _cloud_from_columns(columns: dict, meta: dict, normal_names: tuple[str, str, str], packed_rgb: bool = False) -> PointCloud:
    """Turn named per-point columns into points + the common attribute names."""
    cols = dict(columns)
    for axis in "xyz":
        if axis not in cols or cols[axis].ndim != 1:
            raise CorruptDataError(f"point fields: expected scalar fields x, y, z, got {list(columns)}")
    xyz = [cols.pop(a) for a in "xyz"]
    dtype = np.float32 if all(c.dtype == np.float32 for c in xyz) else np.float64
    points = np.stack([c.astype(dtype, copy=False) for c in xyz], axis=1)
    attrs: dict[str, np.ndarray] = {}
    if all(n in cols for n in normal_names):
        attrs["normals"] = np.stack([cols.pop(n) for n in normal_names], axis=1)
    for triple in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if all(n in cols for n in triple):
            attrs["rgb"] = np.stack([cols.pop(n) for n in triple], axis=1)
            for alpha in ("alpha", "a", "diffuse_alpha"):
                if alpha in cols:
                    attrs["alpha"] = cols.pop(alpha)
            break
    if packed_rgb:
        for name in ("rgb", "rgba"):
            if name in cols and cols[name].ndim == 1 and cols[name].dtype.itemsize == 4:
                bits = cols.pop(name).view(np.uint32)
                attrs["rgb"] = np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=1).astype(np.uint8)
                if name == "rgba":
                    attrs["alpha"] = ((bits >> 24) & 0xFF).astype(np.uint8)
    for name in list(cols):
        if name == "_" or name.startswith("__"):
            continue  # PCD padding fields
        attrs[name] = cols.pop(name)
    return PointCloud(points, attrs, None, "", meta)


# ============================================================================ LAS / LAZ


def _read_las(path: Path) -> PointCloud:
    with open(path, "rb") as fh:
        head = fh.read(375)
    size = path.stat().st_size
    if head[:4] != b"LASF":
        raise CorruptDataError(f"LAS: expected the magic 'LASF', got {head[:4]!r}")
    if len(head) < 227:
        raise TruncatedFileError(f"LAS: the public header needs at least 227 bytes, the file has {len(head)}")
    version = (head[24], head[25])
    (offset_to_points,) = struct.unpack_from("<I", head, 96)
    fmt_byte = head[104]
    (record_len,) = struct.unpack_from("<H", head, 105)
    (count,) = struct.unpack_from("<I", head, 107)
    if version >= (1, 4) and len(head) >= 255:
        count = struct.unpack_from("<Q", head, 247)[0] or count
    compressed = bool(fmt_byte & 0x80) or path.suffix.lower() == ".laz"
    if offset_to_points > size:
        raise TruncatedFileError(f"LAS: points start at byte {offset_to_points}, the file has {size} bytes")
    if not compressed and offset_to_points + count * record_len > size:
        raise TruncatedFileError(
            f"LAS: {count} points × {record_len} bytes need {offset_to_points + count * record_len} bytes, the file has {size}"
        )
    if compressed:
        with open(path, "rb") as fh:
            fh.seek(offset_to_points)
            table = fh.read(8)
        # LASzip starts the point data with the int64 offset of its chunk table, written last
        if len(table) < 8:
            raise TruncatedFileError(f"LAZ: the file ends at byte {size}, before the compressed points start")
        (chunk_table,) = struct.unpack("<q", table)
        if chunk_table != -1 and chunk_table + 8 > size:
            raise TruncatedFileError(f"LAZ: the chunk table is at byte {chunk_table}, the file has only {size} bytes")
    try:
        import laspy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading LAS/LAZ needs laspy (and lazrs for LAZ): pip install 'octformer[io]'") from exc
    try:
        las = laspy.read(str(path))
    except Exception as exc:  # laspy reports corrupt/truncated LAZ chunks with its own exception types
        raise CorruptDataError(f"LAS: laspy could not decode {path.name}: {exc}") from exc
    if len(las.points) != count:
        raise TruncatedFileError(f"LAS: header says {count} points, decoded {len(las.points)}")
    points = np.stack([np.asarray(las.x, dtype=np.float64), np.asarray(las.y, dtype=np.float64), np.asarray(las.z, dtype=np.float64)], axis=1)
    dims = set(las.point_format.dimension_names)
    attrs: dict[str, np.ndarray] = {}
    for name in ("intensity", "classification", "return_number", "number_of_returns", "gps_time", "point_source_id"):
        if name in dims:
            attrs[name] = np.asarray(las[name]).copy()
    if {"red", "green", "blue"} <= dims:
        attrs["rgb"] = np.stack([np.asarray(las[c]) for c in ("red", "green", "blue")], axis=1).astype(np.uint16)
    meta = {
        "version": f"{version[0]}.{version[1]}",
        "point_format": int(las.header.point_format.id),
        "compressed": compressed,
        "scale": np.asarray(las.header.scales, dtype=np.float64),
        "offset": np.asarray(las.header.offsets, dtype=np.float64),
    }
    return PointCloud(points, attrs, None, "las", meta)


# ============================================================================ raw .bin formats


def _raw_records(data: bytes, record: int, what: str) -> None:
    if len(data) % record:
        raise CorruptDataError(
            f"{what}: file size {len(data)} is not a multiple of the {record}-byte record; the file is truncated or not {what}"
        )


def _read_kitti(path: Path, data: bytes, labels: Any) -> PointCloud:
    _raw_records(data, 16, "KITTI .bin (N×4 float32)")
    arr = np.frombuffer(data, dtype="<f4").reshape(-1, 4)
    cloud = PointCloud(arr[:, :3].copy(), {"intensity": arr[:, 3].copy()}, None, "kitti", {})
    label_path = _find_label_file(path, labels)
    if label_path is not None:
        sem, inst = read_semantickitti_labels(label_path)
        if sem.shape[0] != len(cloud):
            raise CorruptDataError(f"labels: {label_path} has {sem.shape[0]} labels, the scan {path.name} has {len(cloud)} points")
        cloud.attributes["label"] = sem
        cloud.attributes["instance"] = inst
        cloud.attributes["label_learning"] = map_semantickitti_labels(sem)
        cloud.meta["label_path"] = label_path
    return cloud


def _find_label_file(path: Path, labels: Any) -> Path | None:
    if labels is None or labels is False:
        return None
    if isinstance(labels, str) and labels == "auto":
        for cand in (path.with_suffix(".label"), path.parent.parent / "labels" / (path.stem + ".label")):
            if cand.is_file():
                return cand
        return None
    if labels is True:
        found = _find_label_file(path, "auto")
        if found is None:
            raise FileNotFoundError(f"labels: no {path.stem}.label beside {path} or in ../labels/")
        return found
    lp = Path(os.fspath(labels))
    if not lp.is_file():
        raise FileNotFoundError(f"labels: no such file: {lp}")
    return lp


def read_semantickitti_labels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(N,) uint16 raw semantic ids (low 16 bits) and (N,) uint16 instance ids (high 16 bits)."""
    data = Path(os.fspath(path)).read_bytes()
    _raw_records(data, 4, "SemanticKITTI .label (uint32)")
    raw = np.frombuffer(data, dtype="<u4")
    return (raw & 0xFFFF).astype(np.uint16), (raw >> 16).astype(np.uint16)


_LEARNING_LUT = np.full(1 << 16, 255, dtype=np.uint8)
for _raw, _cls in SEMANTICKITTI_LEARNING_MAP.items():
    _LEARNING_LUT[_raw] = _cls


def map_semantickitti_labels(raw_ids: np.ndarray) -> np.ndarray:
    """Raw SemanticKITTI ids → (N,) uint8 training ids 0..19 (0 = ignored); unknown ids raise."""
    raw_ids = np.asarray(raw_ids)
    if raw_ids.size and (raw_ids.min() < 0 or raw_ids.max() >= 1 << 16):
        raise CorruptDataError(f"labels: expected raw ids in 0..65535, got range [{raw_ids.min()}, {raw_ids.max()}]")
    out = _LEARNING_LUT[raw_ids.astype(np.int64)]
    if np.any(out == 255):
        unknown = np.unique(raw_ids[out == 255])[:10].tolist()
        raise CorruptDataError(f"labels: raw ids {unknown} are not SemanticKITTI classes (see SEMANTICKITTI_RAW_NAMES)")
    return out


def _read_nuscenes(data: bytes) -> PointCloud:
    _raw_records(data, 20, "nuScenes .pcd.bin (N×5 float32)")
    arr = np.frombuffer(data, dtype="<f4").reshape(-1, 5)
    ring = arr[:, 4]
    if ring.size and (not np.isfinite(ring).all() or np.any(ring != np.rint(ring)) or ring.min() < 0 or ring.max() > 255):
        raise CorruptDataError("nuScenes .pcd.bin: column 5 (ring index) must hold whole numbers 0..255")
    return PointCloud(arr[:, :3].copy(), {"intensity": arr[:, 3].copy(), "ring": ring.astype(np.uint8)}, None, "nuscenes", {})


def _read_pointnetvlad(data: bytes) -> PointCloud:
    _raw_records(data, 24, "PointNetVLAD .bin (N×3 float64)")
    return PointCloud(np.frombuffer(data, dtype="<f8").reshape(-1, 3).copy(), {}, None, "pointnetvlad", {})


# ============================================================================ NumPy, OBJ


def _points_from_array(arr: np.ndarray, what: str) -> tuple[np.ndarray, dict]:
    if arr.dtype.names:
        if not {"x", "y", "z"} <= set(arr.dtype.names):
            raise CorruptDataError(f"{what}: structured array needs fields x, y, z, got {arr.dtype.names}")
        cols = {n: np.asarray(arr[n]).reshape(arr.shape[0], *arr.dtype[n].shape) for n in arr.dtype.names}
        cloud = _cloud_from_columns(cols, {}, normal_names=("nx", "ny", "nz"))
        return cloud.points, cloud.attributes
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.dtype.kind != "f":
        raise CorruptDataError(f"{what}: expected a float array of shape (N, 3+), got shape {arr.shape} dtype {arr.dtype}")
    attrs = {"features": np.ascontiguousarray(arr[:, 3:])} if arr.shape[1] > 3 else {}
    return np.ascontiguousarray(arr[:, :3]), attrs


def _read_npy(data: bytes) -> PointCloud:
    import io as _stdio

    if not data.startswith(b"\x93NUMPY"):
        raise CorruptDataError(f"NPY: expected the magic b'\\x93NUMPY', got {data[:6]!r}")
    fh = _stdio.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise UnsupportedFormatError(f"NPY: format version {version} is not supported (expected 1.0 or 2.0)")
    except OctformerError:
        raise
    except Exception as exc:  # numpy parses the header dict with ast/tokenize, which raise many types
        raise CorruptDataError(f"NPY: malformed header: {exc}") from exc
    if dtype.hasobject:
        raise UnsupportedFormatError("NPY: object arrays (pickles) are not read")
    count = int(np.prod(shape, dtype=np.int64))
    need = count * dtype.itemsize
    if len(data) - fh.tell() < need:
        raise TruncatedFileError(f"NPY: shape {shape} {dtype} needs {need} bytes, only {len(data) - fh.tell()} left")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=fh.tell()).reshape(shape, order="F" if fortran else "C")
    points, attrs = _points_from_array(arr, "NPY")
    return PointCloud(points, attrs, None, "npy", {})


_NPZ_POINT_KEYS = ("points", "xyz", "coord", "coords", "pos", "positions")


def _read_npz(path: Path) -> PointCloud:
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise CorruptDataError("NPZ: expected a zip archive (magic 'PK\\x03\\x04')")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile, zlib and numpy's header parser raise many exception types
        raise CorruptDataError(f"NPZ: cannot load {path.name}: {type(exc).__name__}: {exc}") from exc
    key = next((k for k in _NPZ_POINT_KEYS if k in arrays), None)
    if key is None:
        raise CorruptDataError(f"NPZ: expected an array named one of {_NPZ_POINT_KEYS}, got {sorted(arrays)}")
    points, attrs = _points_from_array(arrays.pop(key), f"NPZ[{key!r}]")
    if points.shape[1] != 3 or "features" in attrs:
        raise CorruptDataError(f"NPZ: {key!r} must have shape (N, 3), got {arrays.get(key, points).shape}")
    n = points.shape[0]
    other = {}
    for k, v in arrays.items():
        if v.ndim >= 1 and v.shape[0] == n:
            attrs[k] = v
        else:
            other[k] = v
    return PointCloud(points, attrs, None, "npz", {"other_arrays": other})


def _read_obj(data: bytes) -> PointCloud:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptDataError("OBJ: not a UTF-8 text file") from exc
    vlines = []
    nfaces = 0
    for line in text.splitlines():
        if line.startswith("v "):
            vlines.append(line[2:])
        elif line.startswith("f "):
            nfaces += 1
    if not vlines:
        raise CorruptDataError("OBJ: no 'v x y z' vertex lines found")
    widths = {len(v.split()) for v in vlines}
    try:
        if len(widths) == 1 and widths.pop() in (3, 4, 6):
            k = len(vlines[0].split())
            values = np.array(" ".join(vlines).split(), dtype=np.float64).reshape(len(vlines), k)
        else:
            bad = next(i for i, v in enumerate(vlines) if len(v.split()) not in (3, 4, 6) or len(v.split()) != len(vlines[0].split()))
            raise CorruptDataError(f"OBJ: vertex {bad} has {len(vlines[bad].split())} values, expected 3 (x y z), 4 (x y z w) or 6 (x y z r g b) on every line")
    except ValueError as exc:
        raise CorruptDataError(f"OBJ: non-numeric vertex coordinate: {exc}") from exc
    attrs = {}
    if values.shape[1] == 6:
        attrs["rgb"] = values[:, 3:6].astype(np.float32)  # OBJ vertex colours are floats in [0, 1]
    return PointCloud(values[:, :3].copy(), attrs, None, "obj", {"num_faces": nfaces})


# ============================================================================ writers


def _as_cloud(cloud: PointCloud | np.ndarray, attributes: Mapping[str, np.ndarray] | None) -> tuple[np.ndarray, dict]:
    if isinstance(cloud, PointCloud):
        points, attrs = cloud.points, dict(cloud.attributes)
        if attributes:
            attrs.update(attributes)
    else:
        points, attrs = np.asarray(cloud), dict(attributes or {})
    if points.ndim != 2 or points.shape[1] != 3 or points.dtype.kind != "f":
        raise OctformerError(f"points: expected a float array of shape (N, 3), got shape {points.shape} dtype {points.dtype}")
    n = points.shape[0]
    for k, v in attrs.items():
        v = np.asarray(v)
        if v.shape[:1] != (n,) or v.ndim > 2:
            raise OctformerError(f"attributes[{k!r}]: expected shape ({n},) or ({n}, C), got {v.shape}")
        if v.dtype.kind not in "fiub":
            raise OctformerError(f"attributes[{k!r}]: expected a numeric dtype, got {v.dtype}")
        attrs[k] = v
    if points.dtype not in (np.float32, np.float64):
        points = points.astype(np.float64)
    return points, attrs


def _flat_columns(points: np.ndarray, attrs: dict, normal_names: tuple[str, str, str], rgb_names: tuple[str, str, str] | None) -> list[tuple[str, np.ndarray]]:
    cols = [("x", points[:, 0]), ("y", points[:, 1]), ("z", points[:, 2])]
    for k, v in attrs.items():
        if k == "normals":
            if v.ndim != 2 or v.shape[1] != 3:
                raise OctformerError(f"attributes['normals']: expected shape (N, 3), got {v.shape}")
            cols += list(zip(normal_names, v.T))
        elif k == "rgb" and rgb_names is not None:
            if v.ndim != 2 or v.shape[1] != 3:
                raise OctformerError(f"attributes['rgb']: expected shape (N, 3), got {v.shape}")
            cols += list(zip(rgb_names, v.T))
        elif v.ndim == 2:
            cols += [(f"{k}_{j}", v[:, j]) for j in range(v.shape[1])]
        else:
            cols.append((k, v))
    return cols


_PLY_NAMES = {np.dtype(v): k for k, v in {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4", "float": "f4", "double": "f8"}.items()}


def write_ply(path: str | os.PathLike, cloud: PointCloud | np.ndarray, attributes: Mapping[str, np.ndarray] | None = None, *, binary: bool = True, byte_order: str = "<") -> None:
    """Write points (+ scalar, ``normals``, ``rgb`` attributes) as a PLY vertex element.

    Multi-column attributes other than normals/rgb become ``name_0``, ``name_1`` …;
    bool/64-bit integer columns are stored as uchar/int32 when they fit, else rejected.
    """
    if byte_order not in ("<", ">"):
        raise OctformerError(f"byte_order: expected '<' or '>', got {byte_order!r}")
    points, attrs = _as_cloud(cloud, attributes)
    cols = [(n, _ply_storable(n, v)) for n, v in _flat_columns(points, attrs, ("nx", "ny", "nz"), ("red", "green", "blue"))]
    n = points.shape[0]
    fmt = ("binary_little_endian" if byte_order == "<" else "binary_big_endian") if binary else "ascii"
    header = ["ply", f"format {fmt} 1.0", "comment written by octformer", f"element vertex {n}"]
    header += [f"property {_PLY_NAMES[v.dtype]} {name}" for name, v in cols]
    header.append("end_header")
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            dt = np.dtype([(name, byte_order + v.dtype.str[1:]) for name, v in cols])
            rec = np.empty(n, dtype=dt)
            for name, v in cols:
                rec[name] = v
            fh.write(rec.tobytes())
        else:
            fh.write(_ascii_rows(cols, n).encode("ascii"))


def _ply_storable(name: str, v: np.ndarray) -> np.ndarray:
    if v.dtype == np.bool_:
        return v.astype(np.uint8)
    if v.dtype in _PLY_NAMES:
        return v
    if v.dtype.kind in "iu" and v.size and np.iinfo(np.int32).min <= v.min() and v.max() <= np.iinfo(np.int32).max:
        return v.astype(np.int32)
    if v.dtype.kind in "iu" and not v.size:
        return v.astype(np.int32)
    raise OctformerError(f"attributes[{name!r}]: dtype {v.dtype} has no PLY type (values out of int32 range or float16)")


def _ascii_rows(cols: list[tuple[str, np.ndarray]], n: int) -> str:
    """One text row per point; floats use repr precision so values round-trip exactly."""
    strs = []
    for _, v in cols:
        if v.dtype.kind == "f":
            fmt = "%.9g" if v.dtype.itemsize <= 4 else "%.17g"
            strs.append(np.char.mod(fmt, v.astype(np.float64)))
        else:
            strs.append(v.astype(np.int64).astype(str))
    if n == 0:
        return ""
    table = strs[0]
    for s in strs[1:]:
        table = np.char.add(np.char.add(table, " "), s)
    return "\n".join(table.tolist()) + "\n"


_PCD_TYPE_OF = {"f4": ("F", 4), "f8": ("F", 8), "u1": ("U", 1), "u2": ("U", 2), "u4": ("U", 4), "u8": ("U", 8),
                "i1": ("I", 1), "i2": ("I", 2), "i4": ("I", 4), "i8": ("I", 8)}


def write_pcd(path: str | os.PathLike, cloud: PointCloud | np.ndarray, attributes: Mapping[str, np.ndarray] | None = None, *, data: str = "binary", width: int | None = None, height: int = 1) -> None:
    """Write a PCD v0.7 file (``data`` = ascii, binary, or binary_compressed with literal-only LZF).

    ``rgb`` (N, 3) uint8 is packed into PCL's float ``rgb`` field; ``normals`` become
    normal_x/y/z; other multi-column attributes use COUNT > 1. ``width``×``height`` may
    describe an organized cloud (NaN points are written as they are).
    """
    if data not in ("ascii", "binary", "binary_compressed"):
        raise OctformerError(f"data: expected 'ascii', 'binary' or 'binary_compressed', got {data!r}")
    points, attrs = _as_cloud(cloud, attributes)
    n = points.shape[0]
    width = n if width is None else width
    if width * height != n:
        raise OctformerError(f"width×height: expected {n} points, got {width}×{height} = {width * height}")
    fields: list[tuple[str, np.ndarray]] = [("x", points[:, 0]), ("y", points[:, 1]), ("z", points[:, 2])]
    for k, v in attrs.items():
        if k == "rgb":
            if v.shape[1:] != (3,) or v.dtype != np.uint8:
                raise OctformerError(f"attributes['rgb']: expected (N, 3) uint8 to pack into PCD rgb, got {v.shape} {v.dtype}")
            packed = (v[:, 0].astype(np.uint32) << 16) | (v[:, 1].astype(np.uint32) << 8) | v[:, 2].astype(np.uint32)
            fields.append(("rgb", packed.view(np.float32)))
        elif k == "normals":
            fields += [(f"normal_{a}", v[:, j]) for j, a in enumerate("xyz")]
        else:
            if v.dtype == np.bool_:
                v = v.astype(np.uint8)
            if v.dtype.str[1:] not in _PCD_TYPE_OF:
                raise OctformerError(f"attributes[{k!r}]: dtype {v.dtype} has no PCD type")
            fields.append((k, v))
    types = [_PCD_TYPE_OF[v.dtype.str[1:]] for _, v in fields]
    counts = [1 if v.ndim == 1 else v.shape[1] for _, v in fields]
    header = [
        "# .PCD v0.7 - Point Cloud Data file format (written by octformer)",
        "VERSION 0.7",
        "FIELDS " + " ".join(name for name, _ in fields),
        "SIZE " + " ".join(str(s) for _, s in types),
        "TYPE " + " ".join(t for t, _ in types),
        "COUNT " + " ".join(map(str, counts)),
        f"WIDTH {width}",
        f"HEIGHT {height}",
        "VIEWPOINT 0 0 0 1 0 0 0",
        f"POINTS {n}",
        f"DATA {data}",
    ]
    dt = np.dtype([(name, "<" + v.dtype.str[1:], (c,)) if c > 1 else (name, "<" + v.dtype.str[1:]) for (name, v), c in zip(fields, counts)])
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        if data == "ascii":
            flat = []
            for name, v in fields:
                if name == "rgb":  # PCL prints packed rgb as its float value; keep all bits
                    flat.append((name, v.view(np.uint32).view(np.float32)))
                elif v.ndim == 1:
                    flat.append((name, v))
                else:
                    flat += [(f"{name}_{j}", v[:, j]) for j in range(v.shape[1])]
            fh.write(_ascii_rows(flat, n).encode("ascii"))
            return
        if data == "binary":
            rec = np.empty(n, dtype=dt)
            for name, v in fields:
                rec[name] = v
            fh.write(rec.tobytes())
        else:
            raw = b"".join(np.ascontiguousarray(v, dtype=dt[name].base).tobytes() for name, v in fields)
            stream = lzf_compress_literal(raw)
            fh.write(struct.pack("<II", len(stream), len(raw)) + stream)


def write_kitti_bin(path: str | os.PathLike, cloud: PointCloud | np.ndarray, intensity: np.ndarray | None = None) -> None:
    """Write an N×4 float32 KITTI scan; ``intensity`` defaults to the cloud's ``intensity`` attribute."""
    points, attrs = _as_cloud(cloud, None)
    if intensity is None:
        if "intensity" not in attrs:
            raise OctformerError("intensity: a KITTI .bin stores (x, y, z, remission); pass intensity= or an 'intensity' attribute")
        intensity = attrs["intensity"]
    intensity = np.asarray(intensity)
    if intensity.shape != (points.shape[0],):
        raise OctformerError(f"intensity: expected shape ({points.shape[0]},), got {intensity.shape}")
    out = np.empty((points.shape[0], 4), dtype="<f4")
    out[:, :3] = points
    out[:, 3] = intensity
    out.tofile(path)


def write_points(path: str | os.PathLike, cloud: PointCloud | np.ndarray, format: str | None = None, **options: Any) -> None:
    """Write ``cloud`` in the format named by ``format`` or the extension (ply, pcd, npy, npz, bin)."""
    p = Path(os.fspath(path))
    fmt = format or {".ply": "ply", ".pcd": "pcd", ".npy": "npy", ".npz": "npz", ".bin": "kitti"}.get(p.suffix.lower())
    if fmt == "ply":
        write_ply(p, cloud, **options)
    elif fmt == "pcd":
        write_pcd(p, cloud, **options)
    elif fmt == "kitti":
        write_kitti_bin(p, cloud, **options)
    elif fmt == "npy":
        points, attrs = _as_cloud(cloud, options.pop("attributes", None))
        if attrs:
            raise OctformerError(f"attributes: .npy holds only the (N, 3) points; write .npz to keep {sorted(attrs)}")
        np.save(p, points)
    elif fmt == "npz":
        points, attrs = _as_cloud(cloud, options.pop("attributes", None))
        if "points" in attrs:
            raise OctformerError("attributes: the name 'points' is reserved for the coordinates in .npz")
        np.savez(p, points=points, **attrs)
    else:
        raise UnsupportedFormatError(f"format: cannot write {p.name!r}; expected format= or an extension among .ply .pcd .npy .npz .bin")
