"""ScanNet v2 → prepared segmentation samples with the 20-class and the 200-class (ScanNet200) labels.

Raw layout (the official download)::

    SRC/scannetv2-labels.combined.tsv
    SRC/scans/<scene>/<scene>_vh_clean_2.ply             mesh vertices: x y z float, red green blue alpha uchar
    SRC/scans/<scene>/<scene>_vh_clean_2.labels.ply      same vertices + label (NYU40 id, ushort)
    SRC/scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json   {"segIndices": [per-vertex segment id]}
    SRC/scans/<scene>/<scene>.aggregation.json           {"segGroups": [{"label": raw category, "segments": [...]}]}
    SRC/scans_test/<scene>/<scene>_vh_clean_2.ply        (no labels)

Output ``DST/samples/<scene>.npz``: points (N, 3) float32, colors (N, 3) uint8, labels
(N,) int16 in 0..19 (NYU40 ids of the ScanNet benchmark; -1 otherwise), labels200 (N,)
int16 in 0..199 (raw category ids of ScanNet200 via the TSV; -1 otherwise), instance (N,)
int32 (-1 = none). Splits come from ``--splits DIR`` (scannetv2_{train,val,test}.txt) or,
without it, ``scans`` → trainval and ``scans_test`` → test.

    python datasets/scannet/prepare.py --src ScanNet --dst data/scannet --splits ScanNet/Tasks/Benchmark
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from octformer.data.prepare import base_parser, run_jobs, save_sample, write_meta
from octformer.io import read_points

# NYU40 ids kept by the ScanNet v2 benchmark, in class order, and their names.
CLASS_IDS_20 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
CLASS_NAMES_20 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
    "bathtub", "otherfurniture",
)
# Raw category ids (the TSV's ``id`` column) kept by ScanNet200, in class order.
CLASS_IDS_200 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 31, 32, 33, 34,
    35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 56, 57, 58, 59, 62, 63, 64, 65, 66, 67,
    68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 82, 84, 86, 87, 88, 89, 90, 93, 95, 96, 97, 98, 99, 100, 101,
    102, 103, 104, 105, 106, 107, 110, 112, 115, 116, 118, 120, 121, 122, 125, 128, 130, 131, 132, 134, 136, 138, 139,
    140, 141, 145, 148, 154, 155, 156, 157, 159, 161, 163, 165, 166, 168, 169, 170, 177, 180, 185, 188, 191, 193, 195,
    202, 208, 213, 214, 221, 229, 230, 232, 233, 242, 250, 261, 264, 276, 283, 286, 300, 304, 312, 323, 325, 331, 342,
    356, 370, 392, 395, 399, 408, 417, 488, 540, 562, 570, 572, 581, 609, 748, 776, 1156, 1163, 1164, 1165, 1166, 1167,
    1168, 1169, 1170, 1171, 1172, 1173, 1174, 1175, 1176, 1178, 1179, 1180, 1181, 1182, 1183, 1184, 1185, 1186, 1187,
    1188, 1189, 1190, 1191,
)
TSV_NAME = "scannetv2-labels.combined.tsv"


def lookup_table(ids: tuple[int, ...], size: int) -> np.ndarray:
    """id → class index (or -1) as a dense array."""
    lut = np.full(size, -1, np.int16)
    lut[list(ids)] = np.arange(len(ids), dtype=np.int16)
    return lut


def read_tsv(path: Path) -> dict[str, int]:
    """raw_category → raw id from ``scannetv2-labels.combined.tsv``."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "raw_category" not in rows[0] or "id" not in rows[0]:
        raise ValueError(f"{path}: expected a tab-separated header with 'id' and 'raw_category'")
    return {r["raw_category"]: int(r["id"]) for r in rows}


def convert(scene_dir: str, dst: str, raw_to_id: dict[str, int] | None) -> int:
    """One scene folder → one npz; returns its vertex count."""
    scene = Path(scene_dir)
    name = scene.name
    mesh = read_points(scene / f"{name}_vh_clean_2.ply")
    n = len(mesh)
    if "rgb" not in mesh.attributes:
        raise ValueError(f"{scene}: {name}_vh_clean_2.ply has no red/green/blue vertex colours")
    arrays = {"points": mesh.points.astype(np.float32), "colors": mesh.attributes["rgb"].astype(np.uint8)}
    labels20 = np.full(n, -1, np.int16)
    labels200 = np.full(n, -1, np.int16)
    instance = np.full(n, -1, np.int32)
    labelled = scene / f"{name}_vh_clean_2.labels.ply"
    if labelled.exists():
        lab = read_points(labelled)
        if len(lab) != n:
            raise ValueError(f"{labelled}: {len(lab)} vertices, the mesh has {n}")
        nyu = lab.attributes["label"].astype(np.int64)
        labels20 = lookup_table(CLASS_IDS_20, 41)[np.clip(nyu, 0, 40)]
        labels20[(nyu < 0) | (nyu > 40)] = -1
        segs = json.loads((scene / f"{name}_vh_clean_2.0.010000.segs.json").read_text())["segIndices"]
        segs = np.asarray(segs, dtype=np.int64)
        if len(segs) != n:
            raise ValueError(f"{scene}: segs.json has {len(segs)} entries, the mesh has {n} vertices")
        groups = json.loads((scene / f"{name}.aggregation.json").read_text())["segGroups"]
        lut200 = lookup_table(CLASS_IDS_200, max(CLASS_IDS_200) + 1)
        seg_ids = np.unique(segs)
        for g_index, g in enumerate(groups):
            member = np.isin(segs, np.intersect1d(seg_ids, np.asarray(g["segments"], dtype=np.int64)))
            raw_id = raw_to_id.get(g["label"]) if raw_to_id else None
            if raw_id is not None and raw_id < len(lut200):
                labels200[member] = lut200[raw_id]
            instance[member] = g.get("objectId", g.get("id", g_index))
    arrays.update(labels=labels20, labels200=labels200, instance=instance)
    save_sample(Path(dst), name, **arrays)
    return n


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--splits", type=Path, help="folder with scannetv2_train.txt / _val.txt / _test.txt")
    args = parser.parse_args(argv)
    scenes = sorted(p for sub in ("scans", "scans_test") for p in (args.src / sub).glob("scene*") if p.is_dir())
    if not scenes:
        print(f"--src: expected ScanNet's scans/scene*/ folders under {args.src}", file=sys.stderr)
        return 2
    tsv = args.src / TSV_NAME
    raw_to_id = read_tsv(tsv) if tsv.exists() else None
    if raw_to_id is None:
        print(f"warning: {tsv} not found; labels200 will be all -1 (ignored)", file=sys.stderr)
    jobs = [(s.name, (str(s), str(args.dst), raw_to_id)) for s in scenes]
    run_jobs(jobs, convert, dst=args.dst, workers=args.workers, force=args.force, desc="ScanNet")
    if args.splits:
        splits = {}
        for split in ("train", "val", "test"):
            f = args.splits / f"scannetv2_{split}.txt"
            if f.exists():
                wanted = set(f.read_text().split())
                splits[split] = [s.name for s in scenes if s.name in wanted]
    else:
        splits = {"trainval": [s.name for s in scenes if s.parent.name == "scans"], "test": [s.name for s in scenes if s.parent.name == "scans_test"]}
    id_to_raw = {v: k for k, v in (raw_to_id or {}).items()}
    names200 = [id_to_raw.get(i, f"id{i}") for i in CLASS_IDS_200]
    write_meta(args.dst, "scannet", classes=CLASS_NAMES_20, splits=splits, classes_200=names200)
    print(f"wrote {len(scenes)} scenes to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
