"""What the trainer trains: data, model, per-batch loss and evaluation for each ``task`` of a config.

* ``segmentation`` (Volt, the stand-in): per-point cross entropy, mIoU with per-class IoU;
* ``place_recognition`` (HOTFormerLoc): anchor/positive pairs from the PointNetVLAD
  training pickle, batch-hard triplet loss over in-batch negatives, AR@N / AR@1% / MRR;
* ``generation`` (OctGPT): the model's own masked-token loss, validation loss.

A task reports each batch's loss as a *sum* plus a *count* known before the forward
pass, so the trainer can normalise over the whole accumulation window and all processes.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch

from octformer.errors import OctformerError

__all__ = ["make_task", "SegmentationTask", "PlaceRecognitionTask", "GenerationTask"]


def _registry_model(name: str, params: dict):
    try:
        from octformer.models import create_model
    except ImportError as exc:
        raise OctformerError(f"model.name: {name!r} needs octformer.models, which is not importable here ({exc})") from exc
    return create_model(name, **params)


class _BuildsInput(torch.nn.Module):
    """Wraps a registry model whose ``build_input`` makes its own octree (called in the collate)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def build_input(self, points: list, features: list | None):
        """The model's input octree for a list of (N_i, 3) clouds (features only when they have channels)."""
        return self.model.build_input(points, features if features and features[0].shape[1] else None)


class SegmentationAdapter(_BuildsInput):
    """Collated batch → per-point logits: input octree (built in the worker) → voxel logits → points."""

    def forward(self, batch: dict) -> torch.Tensor:
        tree = batch.get("model_input")
        if tree is None:
            offs = batch["offsets"].tolist()
            pts, feats = batch["points"].cpu().numpy(), batch["features"].cpu().numpy()
            tree = self.build_input([pts[a:b] for a, b in zip(offs[:-1], offs[1:])], [feats[a:b] for a, b in zip(offs[:-1], offs[1:])])
        return self.model.point_logits(self.model(tree), tree)


class DescriptorAdapter(_BuildsInput):
    """Collated clouds → (B, D) global descriptors."""

    def build_input(self, points: list, features: list | None):
        return self.model.build_input(points, None)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch["model_input"])


class GenerationAdapter(_BuildsInput):
    """Collated shapes → the generative model's training loss (a mean over the batch)."""

    def build_input(self, points: list, features: list | None):
        return self.model.build_input(points, None)

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.loss(batch["model_input"], generator)["loss"]


# ------------------------------------------------------------------ segmentation


class SegmentationTask:
    """Per-point semantic segmentation."""

    def __init__(self, cfg: dict, data_root: str | None):
        from octformer.data import PreparedSegmentationDataset, SyntheticStreetDataset, build_transforms

        self.cfg = cfg
        d = cfg["data"]
        seed = int(cfg.get("seed", 0))
        kind = d.get("dataset", "synthetic_street")
        train_tf, val_tf = build_transforms(d.get("transforms")), build_transforms(d.get("val_transforms"))
        if kind == "synthetic_street":
            n = int(d.get("num_points", 4096))
            self.train_set = SyntheticStreetDataset("train", size=int(d.get("size", 48)), num_points=n, transforms=train_tf, seed=seed)
            self.val_set = SyntheticStreetDataset("val", size=int(d.get("val_size", 12)), num_points=n, transforms=val_tf, seed=seed)
        elif kind == "prepared_segmentation":
            root = data_root or d.get("root")
            if not root:
                raise OctformerError(f"--data: config {cfg.get('name')!r} reads a prepared dataset; pass --data DIR (the --dst of datasets/<name>/prepare.py)")
            feats, label_key = tuple(d.get("features", ())), d.get("label_key", "labels")
            self.train_set = PreparedSegmentationDataset(root, d.get("train_split", "train"), label_key=label_key, features=feats, transforms=train_tf, seed=seed)
            self.val_set = PreparedSegmentationDataset(root, d.get("val_split", "val"), label_key=label_key, features=feats, transforms=val_tf, seed=seed)
        else:
            raise OctformerError(f"data.dataset: segmentation reads 'synthetic_street' or 'prepared_segmentation', got {kind!r}")
        self.num_classes = self.train_set.num_classes
        self.ignore = int(getattr(self.train_set, "ignore_index", -1))
        self.describe = f"{len(self.train_set)} train / {len(self.val_set)} val samples, {self.num_classes} classes"

    def build_model(self) -> tuple[torch.nn.Module, str]:
        from octformer.train.standin import STANDIN_NAME, PointVoxelMLPStandIn

        m = dict(self.cfg.get("model", {}))
        name = m.pop("name", STANDIN_NAME)
        params = dict(m.pop("params", {}) or {})
        in_channels = int(self.train_set[0]["features"].shape[1])
        if name == STANDIN_NAME:
            return PointVoxelMLPStandIn(in_channels, self.num_classes, **params), f"{STANDIN_NAME} (stand-in per-point MLP with octree-leaf pooling, not Volt)"
        model = _registry_model(name, {"in_channels": in_channels, "num_classes": self.num_classes, **params})
        if not (hasattr(model, "build_input") and hasattr(model, "point_logits")):
            raise OctformerError(f"model.name: {name!r} is not a segmentation model (it has no build_input/point_logits)")
        return SegmentationAdapter(model), name

    def collate(self, model: torch.nn.Module):
        from octformer.data import PointCollate

        d = self.cfg["data"]
        builder = model.build_input if isinstance(model, _BuildsInput) else None
        return PointCollate(int(d.get("depth", 6)), full_depth=int(d.get("full_depth", 2)), input_builder=builder)

    def count(self, batch: dict) -> torch.Tensor:
        return (batch["labels"] != self.ignore).sum()

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(batch).float(), batch["labels"], ignore_index=self.ignore, reduction="sum")

    def evaluate(self, model, trainer, collate, batch_size: int, autocast) -> tuple[dict, list[str]]:
        from octformer.metrics import confusion_matrix, format_iou_table, segmentation_scores

        c = self.num_classes
        conf = torch.zeros(c, c, dtype=torch.int64)
        idx = list(range(trainer.rank, len(self.val_set), trainer.world))
        with torch.no_grad():
            for i in range(0, len(idx), batch_size):
                batch = trainer._to_device(collate([self.val_set[(0, j)] for j in idx[i : i + batch_size]]))
                with autocast():
                    pred = model(batch).argmax(1).cpu()
                conf += torch.from_numpy(confusion_matrix(pred.numpy(), batch["labels"].cpu().numpy(), c, ignore_index=self.ignore))
        conf = trainer._all_reduce(conf).cpu()
        names = tuple(getattr(self.val_set, "class_names", ()) or ())
        scores = segmentation_scores(conf.numpy(), names)
        support = conf.sum(1).numpy()
        majority = int(np.argmax(support))
        base = np.zeros_like(conf.numpy())
        base[:, majority] = support
        baseline = segmentation_scores(base, names)
        lines = [
            f"validation ({len(self.val_set)} samples): per-class IoU (%), baseline = always predict the majority class '{names[majority] if names else majority}'",
            format_iou_table(scores, baseline),
        ]
        return {"mIoU": scores.miou, "accuracy": scores.accuracy, "iou": scores.iou.tolist(), "baseline_mIoU": baseline.miou}, lines


# ------------------------------------------------------------------ place recognition


class _AnchorPairs(torch.utils.data.Dataset):
    """Training anchors that have a positive; item = anchor plus one positive drawn from rng(seed, epoch, anchor)."""

    def __init__(self, base, seed: int):
        self.base, self.seed = base, seed
        self.anchors = [i for i in range(len(base)) if base.entry(i)["positives"]]
        if not self.anchors:
            raise OctformerError("training_queries.pickle: no submap has a positive within the radius")

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, key) -> dict:
        epoch, k = key if isinstance(key, tuple) else (0, key)
        a = self.anchors[k]
        pos = self.base.entry(a)["positives"]
        p = pos[int(np.random.default_rng([self.seed, int(epoch), a, 1]).integers(len(pos)))]
        return {"anchor": self.base[(epoch, a)], "positive": self.base[(epoch, p)], "a": a, "p": p}


class _PairCollate:
    """B pairs → 2B clouds (anchors then positives), the model's input octree and the in-batch negative mask."""

    def __init__(self, base, builder):
        self.base, self.builder = base, builder

    def __call__(self, items: list[dict]) -> dict:
        ids = [it["a"] for it in items] + [it["p"] for it in items]
        clouds = [it["anchor"]["points"] for it in items] + [it["positive"]["points"] for it in items]
        negatives = torch.zeros(len(items), len(ids), dtype=torch.bool)
        for i, it in enumerate(items):
            neg = set(self.base.entry(it["a"])["negatives"])
            negatives[i] = torch.tensor([j in neg for j in ids])
        return {"model_input": self.builder(clouds, None), "negatives": negatives, "ids": torch.tensor(ids)}


class PlaceRecognitionTask:
    """Global descriptors trained with a batch-hard triplet loss; PointNetVLAD-protocol evaluation.

    Negatives are searched within each process's share of the batch (no cross-process gather).
    """

    def __init__(self, cfg: dict, data_root: str | None):
        from octformer.data import PlaceRecognitionDataset, build_transforms

        self.cfg = cfg
        d = cfg["data"]
        self.root = data_root or d.get("root")
        if not self.root:
            raise OctformerError(f"--data: config {cfg.get('name')!r} reads prepared place-recognition data; pass --data DIR")
        seed = int(cfg.get("seed", 0))
        self.base = PlaceRecognitionDataset(self.root, "train", transforms=build_transforms(d.get("transforms")), seed=seed)
        self.train_set = _AnchorPairs(self.base, seed)
        self.margin = float(cfg["train"].get("margin", 0.2))
        with open(f"{self.root}/evaluation_database.pickle", "rb") as fh:
            self.num_runs = len(pickle.load(fh))
        self.describe = f"{len(self.train_set)} training anchors with positives, {self.num_runs} evaluation runs"

    def build_model(self) -> tuple[torch.nn.Module, str]:
        m = dict(self.cfg.get("model", {}))
        name = m.pop("name")
        return DescriptorAdapter(_registry_model(name, dict(m.pop("params", {}) or {}))), name

    def collate(self, model):
        return _PairCollate(self.base, model.build_input)

    def count(self, batch: dict) -> torch.Tensor:
        return batch["negatives"].any(1).sum()

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        desc = model(batch).float()
        b = batch["negatives"].shape[0]
        dist = torch.cdist(desc[:b], desc)
        pos = dist[torch.arange(b), b + torch.arange(b)]
        neg = dist.masked_fill(~batch["negatives"].to(dist.device), float("inf")).min(1).values
        valid = batch["negatives"].any(1).to(dist.device)
        return torch.relu(self.margin + pos - neg)[valid].sum()

    def _descriptors(self, model, trainer, split: str, run: int, batch_size: int, autocast) -> np.ndarray:
        from octformer.data import PlaceRecognitionDataset

        ds = PlaceRecognitionDataset(self.root, split, run=run)
        out = []
        with torch.no_grad():
            for i in range(0, len(ds), batch_size):
                clouds = [ds[(0, j)]["points"] for j in range(i, min(i + batch_size, len(ds)))]
                with autocast():
                    out.append(model({"model_input": model.build_input(clouds, None)}).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1))

    def evaluate(self, model, trainer, collate, batch_size: int, autocast) -> tuple[dict, list[str]]:
        from octformer.data.placerec import true_neighbors_by_pair
        from octformer.metrics import mean_place_recognition_scores

        with open(f"{self.root}/evaluation_query.pickle", "rb") as fh:
            query_sets = pickle.load(fh)
        inner = model.module if hasattr(model, "module") else model
        db = [self._descriptors(inner, trainer, "database", r, batch_size, autocast) for r in range(self.num_runs)]
        qs = [self._descriptors(inner, trainer, "query", r, batch_size, autocast) for r in range(self.num_runs)]
        s = mean_place_recognition_scores(qs, db, true_neighbors_by_pair(query_sets))
        res = s.as_dict()
        line = f"validation ({self.num_runs} runs, {s.num_evaluated} queries with a true match): " + "  ".join(f"{k} {v:.1f}" for k, v in res.items())
        return res, [line]


# ------------------------------------------------------------------ generation


class GenerationTask:
    """Shape generation: the model's own masked-token loss on prepared ShapeNet-style shapes."""

    def __init__(self, cfg: dict, data_root: str | None):
        from octformer.data import ShapeDataset, build_transforms

        self.cfg = cfg
        d = cfg["data"]
        root = data_root or d.get("root")
        if not root:
            raise OctformerError(f"--data: config {cfg.get('name')!r} reads prepared shapes; pass --data DIR (the --dst of datasets/shapenet/prepare.py)")
        seed = int(cfg.get("seed", 0))
        self.seed = seed
        self.train_set = ShapeDataset(root, d.get("train_split", "train"), transforms=build_transforms(d.get("transforms")), seed=seed)
        self.val_set = ShapeDataset(root, d.get("val_split", "val"), seed=seed)
        self.describe = f"{len(self.train_set)} train / {len(self.val_set)} val shapes"

    def build_model(self) -> tuple[torch.nn.Module, str]:
        m = dict(self.cfg.get("model", {}))
        name = m.pop("name")
        model = _registry_model(name, dict(m.pop("params", {}) or {}))
        if not hasattr(model, "loss"):
            raise OctformerError(f"model.name: {name!r} has no loss(octree) for generative training")
        return GenerationAdapter(model), name

    def collate(self, model):
        from octformer.data import PointCollate

        return PointCollate(None, build=False, input_builder=model.build_input)

    def count(self, batch: dict) -> torch.Tensor:
        return torch.tensor(len(batch["names"]))

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        return model(batch).float() * len(batch["names"])

    def evaluate(self, model, trainer, collate, batch_size: int, autocast) -> tuple[dict, list[str]]:
        gen = torch.Generator().manual_seed(self.seed)
        total, n = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        idx = list(range(trainer.rank, len(self.val_set), trainer.world))
        inner = model.module if hasattr(model, "module") else model
        with torch.no_grad():
            for i in range(0, len(idx), batch_size):
                batch = collate([self.val_set[(0, j)] for j in idx[i : i + batch_size]])
                with autocast():
                    total += float(inner(batch, gen)) * len(batch["names"])
                n += len(batch["names"])
        total, n = trainer._all_reduce(total).cpu(), trainer._all_reduce(n).cpu()
        val = float(total.item() / max(n.item(), 1))
        return {"val_loss": val}, [f"validation ({len(self.val_set)} shapes): masked-token loss {val:.4f}"]


TASKS: dict[str, Any] = {"segmentation": SegmentationTask, "place_recognition": PlaceRecognitionTask, "generation": GenerationTask}


def make_task(cfg: dict, data_root: str | None):
    """The task object named by ``cfg["task"]`` (default segmentation)."""
    name = cfg.get("task", "segmentation")
    if name not in TASKS:
        raise OctformerError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](cfg, data_root)
