"""The ``octformer`` command line: ``octformer inspect [FILE]`` builds an octree and draws it.

Also runnable as ``python -m octformer.cli``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

DEMO_SEED = 0
DEMO_DEPTH = 8
LARGE_SCAN_POINTS = 50_000
LARGE_SCAN_DEPTH = 10
# inspect reports the median of the rebuilds after the first call: at least WARM_BUILDS_MIN,
# then more until WARM_BUILDS_MAX or WARM_SECONDS (a fresh process's first ~30 builds of a
# SemanticKITTI scan ran ~1.4x slower than later ones, so 5 rebuilds overstated the time)
WARM_BUILDS_MIN, WARM_BUILDS_MAX, WARM_SECONDS = 5, 50, 0.3
PANEL = 400  # pixels per projection panel
MARGIN = 12
TITLE = 22
IMAGE_SIZE = (3 * PANEL + 4 * MARGIN, PANEL + 2 * MARGIN + TITLE)
_MAX_RASTER = 1024  # cells per panel side before binning (keeps deep trees cheap to draw)

_INSPECT_HELP = f"""\
Read a point cloud (or generate a demo street scene), build its octree with
octformer.build_octree, print the bounding box, depth, leaf voxel size, per-depth
node counts (all / non-empty) and build time, and write a PNG with three
orthographic views of the occupied leaf cells (top, front, side), coloured by height.

Default depth: {DEMO_DEPTH} for the demo scene and for files with fewer than
{LARGE_SCAN_POINTS:,} points; {LARGE_SCAN_DEPTH} for larger files (full lidar sweeps,
room scans), where depth 8 cells would be too coarse to show structure.
--depth and --voxel-size override it (give one, not both).

Formats: .ply .pcd (ascii/binary/binary_compressed) .las .laz .bin (KITTI N×4 float32;
PointNetVLAD 4096×3 float64) .pcd.bin (nuScenes) .npy .npz .obj.
The PNG is {IMAGE_SIZE[0]}×{IMAGE_SIZE[1]} pixels.

exit status: 0 ok, 2 bad arguments or an unreadable/malformed file.
"""


def demo_scene(num_points: int = 100_000, seed: int = DEMO_SEED) -> np.ndarray:
    """(N, 3) float32 street scene (road, kerbs, two facades, cars, poles, trees) in metres, deterministic."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []

    def plane(n: int, origin: tuple, u: tuple, v: tuple) -> None:
        a, b = rng.random((n, 1)), rng.random((n, 1))
        parts.append(np.asarray(origin) + a * np.asarray(u) + b * np.asarray(v))

    def box(n: int, lo: tuple, size: tuple) -> None:
        lo_, sz = np.asarray(lo, float), np.asarray(size, float)
        areas = np.array([sz[1] * sz[2], sz[1] * sz[2], sz[0] * sz[2], sz[0] * sz[2], sz[0] * sz[1]])
        faces = rng.choice(5, size=n, p=areas / areas.sum())  # 4 sides + roof, no floor
        p = lo_ + rng.random((n, 3)) * sz
        axis = np.array([0, 0, 1, 1, 2])[faces]
        side = np.array([0, 1, 0, 1, 1])[faces]
        p[np.arange(n), axis] = lo_[axis] + side * sz[axis]
        parts.append(p)

    def cylinder(n: int, x: float, y: float, r: float, z0: float, h: float) -> None:
        t = rng.random(n) * 2 * math.pi
        parts.append(np.stack([x + r * np.cos(t), y + r * np.sin(t), z0 + rng.random(n) * h], axis=1))

    def sphere(n: int, c: tuple, r: float) -> None:
        d = rng.normal(size=(n, 3))
        parts.append(np.asarray(c) + r * d / np.linalg.norm(d, axis=1, keepdims=True))

    scale = num_points / 100_000
    k = lambda m: max(1, int(m * scale))  # noqa: E731 - point budget per part
    plane(k(30_000), (-30, -6, 0), (60, 0, 0), (0, 12, 0))  # road + pavements
    plane(k(3_000), (-30, -4, 0), (60, 0, 0), (0, 0, 0.15))  # kerb faces
    plane(k(3_000), (-30, 4, 0), (60, 0, 0), (0, 0, 0.15))
    plane(k(14_000), (-30, 6, 0), (60, 0, 0), (0, 0, 12))  # facades
    plane(k(14_000), (-30, -6, 0), (60, 0, 0), (0, 0, 9))
    for i, x in enumerate((-22.0, -9.0, 4.0, 17.0)):  # parked cars
        box(k(3_500), (x, -3.8 if i % 2 else 2.0, 0.2), (4.2, 1.8, 1.5))
    for x in np.arange(-26.0, 30.0, 12.0):  # street lights
        cylinder(k(900), x, -4.6, 0.12, 0.0, 6.0)
    for x in np.arange(-20.0, 30.0, 12.0):  # trees: trunk + canopy
        cylinder(k(700), x, 4.6, 0.25, 0.0, 3.0)
        sphere(k(2_200), (x, 4.6, 4.5), 1.8)
    pts = np.concatenate(parts)
    pts += rng.normal(scale=0.01, size=pts.shape)  # sensor noise
    return pts.astype(np.float32)


# ---------------------------------------------------------------------------- picture


def _ramp(t: np.ndarray) -> np.ndarray:
    """Map t in [0, 1] to RGB along a blue → cyan → green → yellow → red ramp, (…, 3) uint8."""
    anchors = np.array([[48, 18, 140], [33, 145, 200], [60, 190, 100], [240, 220, 40], [220, 50, 32]], dtype=np.float64)
    x = np.clip(t, 0, 1) * (len(anchors) - 1)
    i = np.minimum(x.astype(np.int64), len(anchors) - 2)
    f = (x - i)[..., None]
    return (anchors[i] * (1 - f) + anchors[i + 1] * f).astype(np.uint8)


def _panel(u: np.ndarray, v: np.ndarray, height: np.ndarray, shade: np.ndarray | None, box: tuple) -> np.ndarray:
    """Image of the cells (u, v) inside ``box`` = (u0, u1, v0, v1), each coloured by its maximum ``height`` (0..1)."""
    u0, u1, v0, v1 = box
    w, h = u1 - u0 + 1, v1 - v0 + 1
    img = np.full((h, w, 3), 250, dtype=np.uint8)
    inside = (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)
    u, v, height = u[inside] - u0, v[inside] - v0, height[inside]
    shade = None if shade is None else shade[inside]
    if u.size == 0:
        return img
    flat = u * h + v
    key = height if shade is None else height + 2.0 * shade  # side views show the nearest cell
    order = np.lexsort((key, flat))
    last = np.r_[flat[order][1:] != flat[order][:-1], True]
    sel = order[last]
    colour = _ramp(height[sel]).astype(np.float64)
    if shade is not None:
        colour *= (0.55 + 0.45 * shade[sel])[:, None]
    img[h - 1 - v[sel], u[sel]] = colour.astype(np.uint8)  # v grows upwards
    return img


def _fit(view: np.ndarray, size: int):
    """Scale an (h, w, 3) view to fit a size×size panel (nearest neighbour, aspect kept, centred)."""
    from PIL import Image

    h, w = view.shape[:2]
    s = size / max(h, w)
    img = Image.fromarray(view).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.NEAREST)
    panel = Image.new("RGB", (size, size), (250, 250, 250))
    panel.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return panel


def render_octree_png(tree, out: Path, title: str) -> tuple[int, int]:
    """Draw top/front/side orthographic views of the non-empty leaf cells, coloured by height; return the PNG size.

    Each view is cropped to where 99.9% of the occupied cells lie (isolated outliers would
    otherwise shrink the scene) and the colour ramp spans the same range of heights.
    """
    from PIL import Image, ImageDraw

    xyz = np.asarray(tree.xyz(tree.depth)).astype(np.int64)
    shift = max(0, tree.depth - int(math.log2(_MAX_RASTER)))
    c = xyz >> shift
    if c.shape[0]:
        lo = np.floor(np.percentile(c, 0.05, axis=0)).astype(np.int64)
        hi = np.ceil(np.percentile(c, 99.95, axis=0)).astype(np.int64)
    else:
        lo = hi = np.zeros(3, dtype=np.int64)
    z_t = (c[:, 2] - lo[2]) / max(1, hi[2] - lo[2])
    span = np.maximum(hi - lo, 1)
    views = [
        _panel(c[:, 0], c[:, 1], z_t, None, (lo[0], hi[0], lo[1], hi[1])),  # top: x right, y up
        _panel(c[:, 0], c[:, 2], z_t, 1.0 - (c[:, 1] - lo[1]) / span[1], (lo[0], hi[0], lo[2], hi[2])),  # front: near = small y
        _panel(c[:, 1], c[:, 2], z_t, (c[:, 0] - lo[0]) / span[0], (lo[1], hi[1], lo[2], hi[2])),  # side: near = large x
    ]
    canvas = Image.new("RGB", IMAGE_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, 6), title, fill=(0, 0, 0))
    for i, (view, label) in enumerate(zip(views, ("top (x right, y up)", "front (x right, z up)", "side (y right, z up)"))):
        x0 = MARGIN + i * (PANEL + MARGIN)
        canvas.paste(_fit(view, PANEL), (x0, TITLE + MARGIN))
        draw.rectangle([x0 - 1, TITLE + MARGIN - 1, x0 + PANEL, TITLE + MARGIN + PANEL], outline=(120, 120, 120))
        draw.text((x0 + 4, TITLE + MARGIN + 4), label, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return canvas.size


# ---------------------------------------------------------------------------- commands


class _UsageError(Exception):
    """A bad argument or unreadable input: reported on stderr with exit status 2."""


def _inspect(args: argparse.Namespace) -> int:
    import octformer
    from octformer.errors import OctformerError
    from octformer.io import read_points

    if args.depth is not None and args.voxel_size is not None:
        raise _UsageError("give --depth or --voxel-size, not both")
    if args.file is None:
        t0 = time.perf_counter()
        points = demo_scene()
        source = f"demo street scene (seed {DEMO_SEED}, generated in {1000 * (time.perf_counter() - t0):.0f} ms)"
        fmt, dropped = "generated", 0
    else:
        path = Path(args.file)
        if not path.exists():
            raise _UsageError(f"no such file: {path}")
        try:
            t0 = time.perf_counter()
            cloud = read_points(path, format=args.format)
            read_ms = 1000 * (time.perf_counter() - t0)
        except (OctformerError, OSError) as exc:
            raise _UsageError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
        points = cloud.points
        source = f"{path} (read in {read_ms:.0f} ms)"
        fmt, dropped = cloud.format, int(cloud.meta.get("num_invalid", 0))
        if len(cloud) and not np.isfinite(points).all():
            keep = np.isfinite(points).all(axis=1)
            dropped += int((~keep).sum())
            points = points[keep]
    if points.shape[0] == 0:
        raise _UsageError("the point cloud is empty: nothing to inspect")

    depth, voxel = args.depth, args.voxel_size
    if depth is None and voxel is None:
        depth = DEMO_DEPTH if args.file is None or points.shape[0] < LARGE_SCAN_POINTS else LARGE_SCAN_DEPTH
    try:
        build_ms = []  # first call pays for thread start-up and page faults; then warm rebuilds
        start = time.perf_counter()
        while len(build_ms) < 1 + WARM_BUILDS_MIN or (
            len(build_ms) < 1 + WARM_BUILDS_MAX and time.perf_counter() - start < WARM_SECONDS
        ):
            t0 = time.perf_counter()
            tree = octformer.build_octree(points, depth, voxel_size=voxel, full_depth=args.full_depth, num_threads=args.threads)
            build_ms.append(1000 * (time.perf_counter() - t0))
    except OctformerError as exc:
        raise _UsageError(str(exc)) from exc

    lo, hi = points.min(axis=0), points.max(axis=0)
    cell = np.asarray(tree.voxel_size)[0]
    print(f"file:        {source}")
    print(f"format:      {fmt}")
    print(f"points:      {points.shape[0]:,}" + (f" ({dropped:,} invalid points dropped)" if dropped else ""))
    print("bbox min:    " + " ".join(f"{v:.4f}" for v in lo))
    print("bbox max:    " + " ".join(f"{v:.4f}" for v in hi))
    print(f"depth:       {tree.depth} (full depth {tree.full_depth})")
    print(f"voxel size:  {cell[0]:.6g} (leaf cell edge, cube of side {cell[0] * (1 << tree.depth):.6g})")
    threads = "all cores" if args.threads is None else f"{args.threads} threads"
    print(f"build time:  {float(np.median(build_ms[1:])):.2f} ms median of {len(build_ms) - 1} warm builds, "
          f"{build_ms[0]:.1f} ms first call ({threads})")
    print(tree.summary())
    print(f"total:       {int(tree.nnum.sum()):,} nodes, {int(tree.nnum_nempty.sum()):,} non-empty, "
          f"{int(tree.nnum_nempty[tree.depth]):,} occupied leaves")
    out = Path(args.out)
    title = f"{Path(args.file).name if args.file else 'demo scene'}: depth {tree.depth}, {int(tree.nnum_nempty[tree.depth]):,} occupied leaves"
    try:
        w, h = render_octree_png(tree, out, title)
    except OSError as exc:
        raise _UsageError(f"cannot write {out}: {exc}") from exc
    print(f"picture:     {out} ({w}x{h} PNG)")
    return 0


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``octformer`` and its subcommands."""
    from octformer.io import FORMATS

    parser = argparse.ArgumentParser(prog="octformer", description="Rust-accelerated octrees for sparse 3D point-cloud transformers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    ins = sub.add_parser(
        "inspect",
        help="build an octree from a point cloud file (or a demo scene), print its node counts and draw it",
        description=_INSPECT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ins.add_argument("file", nargs="?", metavar="FILE", help="point cloud to read; omit for the generated demo scene")
    ins.add_argument("--depth", type=_positive_int, metavar="D", help="octree depth 1..21 (default: see above)")
    ins.add_argument("--voxel-size", type=_positive_float, metavar="V", help="pick the depth whose leaf cell is at most V (file units)")
    ins.add_argument("--full-depth", type=int, default=2, metavar="F", help="levels 0..F are dense, as in ocnn (default 2)")
    ins.add_argument("--out", default="octree.png", metavar="PICTURE.png", help="where to write the picture (default octree.png)")
    ins.add_argument("--threads", type=_positive_int, metavar="N", help="native threads (default: OCTFORMER_NUM_THREADS or all cores)")
    ins.add_argument("--format", choices=FORMATS, help="force the reader instead of guessing from the file name")
    ins.set_defaults(func=_inspect)
    _add_train_parser(sub)
    return parser


_TRAIN_HELP = """\
Train a model from a YAML config: a shipped name (see the list below) or a file path,
followed by KEY=VALUE overrides (e.g. train.lr=0.001 train.epochs=2). With no
arguments it runs the 'tiny' config: a small segmentation network on labelled street
scenes generated on the fly, on CPU, ending with a per-class IoU table.
Under torchrun it trains with DistributedDataParallel (gloo on CPU, nccl on GPU).
"""


def _add_train_parser(sub) -> None:
    """The ``train`` subcommand (arguments only; the work is in octformer.train)."""
    tr = sub.add_parser("train", help="train a model from a YAML config (no arguments: the tiny demo run)", description=_TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _train_options(tr)
    tr.add_argument("items", nargs=argparse.REMAINDER, metavar="CONFIG|KEY=VALUE", help="config name or YAML path, then overrides (options may follow)")
    tr.set_defaults(func=_train)


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="prepared dataset folder (the --dst of datasets/<name>/prepare.py)")
    p.add_argument("--out", metavar="DIR", help="run folder for checkpoints, loss log and results (default: the config's output)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the run folder")


def _train(args: argparse.Namespace) -> int:
    """Run ``octformer train``; bad configs exit 2 with the error message."""
    from octformer.errors import OctformerError
    from octformer.train import train

    rest = argparse.ArgumentParser(prog="octformer train", add_help=False)
    _train_options(rest)
    rest.add_argument("items", nargs="*")
    more, unknown = rest.parse_known_intermixed_args(args.items)
    if unknown:
        raise _UsageError(f"unrecognized arguments: {' '.join(unknown)}")
    args.data, args.out, args.resume = more.data or args.data, more.out or args.out, more.resume or args.resume
    config = None
    overrides = []
    for item in more.items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise _UsageError(f"expected one CONFIG, got {config!r} and {item!r}")
    try:
        train(config, tuple(overrides), out_dir=args.out, data_root=args.data, resume=args.resume)
    except OctformerError as exc:
        raise _UsageError(str(exc)) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``octformer`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _UsageError as exc:
        print(f"octformer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
