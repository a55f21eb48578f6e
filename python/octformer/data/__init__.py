"""Datasets over prepared files, numpy augmentations and an octree-building collate."""

from octformer.data.collate import PointCollate
from octformer.data.datasets import (
    STREET_CLASSES,
    GlobalBatchSampler,
    PlaceRecognitionDataset,
    PreparedSegmentationDataset,
    SampleDataset,
    ShapeDataset,
    SyntheticStreetDataset,
    read_meta,
    steps_for_epochs,
    street_scene,
)
from octformer.data.transforms import (
    CenterShift,
    Compose,
    ElasticDistortion,
    RandomCrop,
    RandomFlip,
    RandomJitter,
    RandomRotate,
    RandomScale,
    build_transforms,
)

__all__ = [
    "PointCollate",
    "STREET_CLASSES",
    "GlobalBatchSampler",
    "PlaceRecognitionDataset",
    "PreparedSegmentationDataset",
    "SampleDataset",
    "ShapeDataset",
    "SyntheticStreetDataset",
    "read_meta",
    "steps_for_epochs",
    "street_scene",
    "CenterShift",
    "Compose",
    "ElasticDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomJitter",
    "RandomRotate",
    "RandomScale",
    "build_transforms",
]
