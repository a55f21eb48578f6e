"""Building blocks for octree / point transformers on flat (concatenated + sample index) batches."""

from octformer.nn.attention import PlanAttention, rpe_bound_for
from octformer.nn.blocks import DropPath, Mlp, TransformerBlock
from octformer.nn.octree_nn import (
    CPE,
    OctreeContext,
    OctreeConv,
    OctreeDownsample,
    OctreeDWConv,
    OctreeUpsample,
    global_pool,
)
from octformer.nn.plans import TokenPlan, global_plan, plan_from_flatten, window_plan

__all__ = [
    "PlanAttention",
    "rpe_bound_for",
    "DropPath",
    "Mlp",
    "TransformerBlock",
    "CPE",
    "OctreeContext",
    "OctreeConv",
    "OctreeDownsample",
    "OctreeDWConv",
    "OctreeUpsample",
    "global_pool",
    "TokenPlan",
    "window_plan",
    "global_plan",
    "plan_from_flatten",
]
