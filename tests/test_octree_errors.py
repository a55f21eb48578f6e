"""Bad input to build_octree: the exception type, and a message naming the argument; never a panic."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import octformer
from octformer import InternalError, OctformerError, OutOfBoundsError, _core

CUBE = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


@pytest.fixture
def pts() -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.9, 0.9, (50, 3)).astype(np.float32)


def raises(exc, *names: str):
    """pytest.raises for ``exc`` whose message starts by naming the argument(s)."""
    return pytest.raises(exc, match="^" + re.escape(" and ".join(names)) + r"\b")


def test_error_classes():
    assert issubclass(OctformerError, ValueError)
    assert issubclass(OutOfBoundsError, OctformerError)
    assert issubclass(InternalError, RuntimeError) and not issubclass(InternalError, ValueError)


# ------------------------------------------------------------------ points


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_points(pts, bad, dtype):
    p = pts.astype(dtype)
    p[17, 2] = bad
    with raises(OctformerError, "points") as info:
        octformer.build_octree(p)
    assert "17" in str(info.value) and str(bad).lower() in str(info.value).lower()
    with raises(OctformerError, "points"):  # clip=True does not hide NaN
        octformer.build_octree(p, bbox=CUBE, clip=True)


def test_non_finite_point_in_later_sample_names_global_index(pts):
    pts[40, 0] = np.nan
    with raises(OctformerError, "points") as info:
        octformer.build_octree(pts, offsets=[0, 20, 50])
    assert "40" in str(info.value)


@pytest.mark.parametrize("shape", [(10, 2), (10, 4), (10,), (10, 3, 1), (3, 10)])
def test_wrong_shape(shape):
    with raises(OctformerError, "points") as info:
        octformer.build_octree(np.zeros(shape, np.float32))
    assert str(shape).replace(",)", ")") in str(info.value) or str(shape) in str(info.value)
    assert "(N, 3)" in str(info.value)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, bool, object, np.complex64, "U3"])
def test_non_float_dtype(dtype):
    with raises(TypeError, "points") as info:
        octformer.build_octree(np.zeros((10, 3)).astype(dtype))
    assert "float" in str(info.value)


@pytest.mark.parametrize("bad", ["points", 3.0, None, {"x": 1}])
def test_not_an_array(bad):
    with raises(TypeError, "points"):
        octformer.build_octree(bad)


def test_other_float_layouts_work(pts):
    """float16, big-endian, Fortran order and strided views are converted, not rejected."""
    want = octformer.build_octree(pts.astype(np.float64), 6, bbox=CUBE)
    for p in (pts.astype(">f4"), pts.astype(">f8"), np.asfortranarray(pts.astype(np.float64))):
        got = octformer.build_octree(p, 6, bbox=CUBE)
        assert got.nnum.tolist() == want.nnum.tolist()
        np.testing.assert_array_equal(got.point_leaf, want.point_leaf)
    wide = np.zeros((50, 6), np.float32)
    wide[:, ::2] = pts
    assert octformer.build_octree(wide[:, ::2], 6, bbox=CUBE) == octformer.build_octree(pts, 6, bbox=CUBE)
    half = octformer.build_octree(pts.astype(np.float16), 6, bbox=CUBE)
    assert half == octformer.build_octree(pts.astype(np.float16).astype(np.float32), 6, bbox=CUBE)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"offsets": np.array([0, 1, 3])}, {"coords": "cylindrical"}, {"features": np.ones((3, 2))}],
    ids=["single", "batch", "cylindrical", "general"],
)
def test_huge_coordinates_with_auto_box(kwargs):
    # the auto cube's centre and side would overflow float64: every path refuses it, naming the point
    pts = np.array([[0.0, 0, 0], [0, 1e308, 0], [0, -1e308, 0]])
    with raises(OctformerError, "points") as info:
        octformer.build_octree(pts, **kwargs)
    assert "1e308 at point" in str(info.value) and "automatic bbox" in str(info.value)
    # an explicit box does no such arithmetic: the same points are only out of bounds there
    with raises(OutOfBoundsError, "points"):
        octformer.build_octree(pts, bbox=CUBE, **kwargs)


# ------------------------------------------------------------------ depth / voxel_size


@pytest.mark.parametrize("depth", [0, 22, -1, 64, 2.5, "8", True])
def test_bad_depth(pts, depth):
    with raises(OctformerError, "depth") as info:
        octformer.build_octree(pts, depth)
    assert "1..21" in str(info.value) and repr(depth) in str(info.value)


def test_depth_limits_work(pts):
    assert octformer.build_octree(pts, 1).depth == 1
    assert octformer.build_octree(pts.astype(np.float64), 21).depth == 21
    assert octformer.build_octree(pts, np.int64(5)).depth == 5
    assert octformer.build_octree(pts).depth == 8  # the documented default


def test_depth_and_voxel_size_both(pts):
    with raises(OctformerError, "depth and voxel_size"):
        octformer.build_octree(pts, 5, voxel_size=0.1)


@pytest.mark.parametrize("voxel", [0, -1.0, np.nan, np.inf, "0.1"])
def test_bad_voxel_size(pts, voxel):
    with raises(OctformerError, "voxel_size"):
        octformer.build_octree(pts, voxel_size=voxel)


def test_voxel_size_too_small_for_max_depth(pts):
    with raises(OctformerError, "voxel_size") as info:
        octformer.build_octree(pts, voxel_size=1e-9)
    assert "21" in str(info.value)


@pytest.mark.parametrize("full_depth", [-1, 1.5, True])
def test_bad_full_depth(pts, full_depth):
    with raises(OctformerError, "full_depth"):
        octformer.build_octree(pts, 5, full_depth=full_depth)


def test_coords_must_be_known(pts):
    with raises(OctformerError, "coords"):
        octformer.build_octree(pts, coords="spherical")


# ------------------------------------------------------------------ empty input


@pytest.mark.parametrize("full_depth", [0, 2, 3])
def test_empty_cloud_gives_empty_octree(full_depth):
    t = octformer.build_octree(np.zeros((0, 3), np.float32), 5, full_depth=full_depth)
    assert t.batch_size == 1 and t.point_leaf.shape == (0,)
    dense = [8**d for d in range(full_depth + 1)]
    assert t.nnum.tolist() == dense + [0] * (5 - full_depth)
    assert t.nnum_nempty.tolist() == dense[:-1] + [0] * (6 - full_depth)
    assert t.batch_nnum.shape == (6, 1)
    assert all(t.keys[d].dtype == np.int64 and t.children[d].dtype == np.int32 for d in range(6))
    assert t.neighbors(5).shape == (0, 27)
    assert t.neighbors(full_depth, nonempty=False).shape == (8**full_depth, 27)
    assert np.isfinite(t.origin).all() and (t.voxel_size > 0).all()
    feats = octformer.build_octree(np.zeros((0, 3)), 4, features=np.zeros((0, 2)), normals=np.zeros((0, 3)))
    assert feats.features.shape == (0, 2) and feats.normals.shape == (0, 3)


def test_empty_sample_inside_batch(pts):
    t = octformer.build_octree(pts, 6, offsets=[0, 20, 20, 50, 50])
    assert t.batch_size == 4
    assert (t.batch_nnum_nempty[t.full_depth :, 1] == 0).all() and (t.batch_nnum_nempty[t.full_depth :, 3] == 0).all()
    assert (t.batch_nnum[t.full_depth + 1 :, [1, 3]] == 0).all()
    np.testing.assert_array_equal(t.batch_nnum[: t.full_depth + 1, 1], [8**d for d in range(t.full_depth + 1)])
    assert set(np.unique(t.batch[6])) == {0, 2}
    alone = [octformer.build_octree(pts[a:b], 6) for a, b in ((0, 20), (20, 20), (20, 50), (50, 50))]
    assert octformer.Octree.merge(alone) == t


def test_all_samples_empty():
    t = octformer.build_octree(np.zeros((0, 3)), 4, offsets=[0, 0, 0])
    assert t.batch_size == 2 and t.nnum_nempty[-1] == 0 and t.batch_nnum.shape == (5, 2)


# ------------------------------------------------------------------ offsets


@pytest.mark.parametrize(
    "offsets, words",
    [
        ([0, 30, 20, 50], "non-decreasing"),
        ([0, 20, 49], "end at N=50"),
        ([0, 20, 51], "end at N=50"),
        ([1, 20, 50], "start at 0"),
        ([-5, 20, 50], "start at 0"),
        (np.array([0.0, 20.0, 50.0]), "integer"),
        (np.array([0, 20, 50], dtype=object), "integer"),
        ([[0, 50]], "1-D"),
        ([50], "B+1"),
        ([], "B+1"),
    ],
)
def test_bad_offsets(pts, offsets, words):
    with raises(OctformerError, "offsets") as info:
        octformer.build_octree(pts, offsets=offsets)
    assert words in str(info.value)


def test_offsets_accept_any_integer_array(pts):
    want = octformer.build_octree(pts, 5, offsets=np.array([0, 20, 50]))
    for offsets in ([0, 20, 50], np.array([0, 20, 50], np.int32), np.array([0, 20, 50], np.uint16)):
        assert octformer.build_octree(pts, 5, offsets=offsets) == want
    torch = pytest.importorskip("torch")
    assert octformer.build_octree(pts, 5, offsets=torch.tensor([0, 20, 50])) == want


# ------------------------------------------------------------------ bbox / clip


def test_points_outside_explicit_bbox(pts):
    pts[[3, 9, 31]] = [[2.0, 0, 0], [0, -3.0, 0], [0, 0, 1.5]]
    box = ((-1, -1, -1), (1, 1, 1))
    with pytest.raises(OutOfBoundsError, match=r"^points: 3 point\(s\) lie outside") as info:
        octformer.build_octree(pts, 5, bbox=box)
    msg = str(info.value)
    assert "clip=True" in msg and "-3.0" in msg and "2.0" in msg  # the points' extent is named
    assert isinstance(info.value, ValueError)


def test_clip_equals_clamping_points_into_the_box(pts):
    pts[[3, 9, 31]] = [[2.0, 0, 0], [0, -3.0, 0], [0, 0, 1.0]]
    box = (np.array([-1.0, -1, -1]), np.array([1.0, 1, 1]))
    got = octformer.build_octree(pts, 5, bbox=box, clip=True)
    want = octformer.build_octree(np.clip(pts, -1, 1), 5, bbox=box)  # the max face itself is inside
    assert got == want


def test_points_on_the_box_faces_are_inside():
    p = np.array([[-1, -1, -1], [1, 1, 1], [1, -1, 0]], np.float32)
    t = octformer.build_octree(p, 3, bbox=CUBE)
    np.testing.assert_array_equal(octformer.key_to_xyz(t.leaf_keys())[t.point_leaf], [[0, 0, 0], [7, 7, 7], [7, 0, 4]])


@pytest.mark.parametrize(
    "bbox",
    [
        ((1, 1, 1), (0, 0, 0)),
        ((0, 0, 0), (1, 0, 1)),
        ((0, 0, 0), (1, 1)),
        ((0, 0, 0),),
        ((np.nan, 0, 0), (1, 1, 1)),
        ((0, 0, 0), (np.inf, 1, 1)),
        "tight",
        3.0,
    ],
)
def test_bad_bbox(pts, bbox):
    with raises(OctformerError, "bbox"):
        octformer.build_octree(pts, 5, bbox=bbox)


# ------------------------------------------------------------------ features / normals


@pytest.mark.parametrize(
    "name, value",
    [
        ("features", np.zeros((49, 2))),
        ("features", np.zeros((51,))),
        ("features", np.zeros((50, 2, 2))),
        ("normals", np.zeros((50, 2))),
        ("normals", np.zeros((49, 3))),
        ("normals", np.zeros((50, 4))),
    ],
)
def test_features_normals_wrong_length(pts, name, value):
    with raises(OctformerError, name) as info:
        octformer.build_octree(pts, **{name: value})
    assert "50" in str(info.value)


def test_features_non_numeric(pts):
    with raises(TypeError, "features"):
        octformer.build_octree(pts, features=np.array(["a"] * 50))


# ------------------------------------------------------------------ threads


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_bad_num_threads(pts, n):
    with raises(OctformerError, "num_threads"):
        octformer.build_octree(pts, num_threads=n)


@pytest.mark.parametrize("value", ["0", "two", "-3"])
def test_bad_thread_env(pts, monkeypatch, value):
    monkeypatch.setenv("OCTFORMER_NUM_THREADS", value)
    with raises(OctformerError, "OCTFORMER_NUM_THREADS"):
        octformer.build_octree(pts)


# ------------------------------------------------------------------ torch input


def test_cpu_tensor_input(pts):
    torch = pytest.importorskip("torch")
    want = octformer.build_octree(pts, 6, features=pts * 2)
    got = octformer.build_octree(torch.from_numpy(pts), 6, features=torch.from_numpy(pts * 2))
    assert got == want


def test_tensor_requiring_grad(pts):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(pts).requires_grad_()
    assert octformer.build_octree(t, 6, normals=t) == octformer.build_octree(pts, 6, normals=pts)
    assert t.grad is None


def test_non_cpu_tensor_is_refused(pts):
    torch = pytest.importorskip("torch")
    with raises(TypeError, "points"):
        octformer.build_octree(torch.from_numpy(pts).to("meta"))


# ------------------------------------------------------------------ no panic reaches Python


def call(fn, *args, **kwargs):
    """Run fn; a PanicException (a BaseException) fails the test, ordinary errors are returned."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, OverflowError, InternalError) as exc:
        return exc
    except BaseException as exc:  # pyo3_runtime.PanicException derives from BaseException
        pytest.fail(f"{type(exc).__module__}.{type(exc).__name__} escaped: {exc}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 40),
    cols=st.sampled_from([3, 3, 3, 2, 4]),
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
    depth=st.one_of(st.none(), st.integers(-2, 25)),
    full_depth=st.integers(-1, 5),
    offsets=st.one_of(st.none(), st.lists(st.integers(-3, 45), min_size=0, max_size=4)),
    bbox=st.one_of(st.none(), st.tuples(st.floats(-2, 2), st.floats(-2, 2))),
    clip=st.booleans(),
    feat_rows=st.one_of(st.none(), st.integers(0, 45)),
    special=st.sampled_from([None, np.nan, np.inf, 1e30, -1e30, 0.0]),
    coords=st.sampled_from(["cartesian", "cylindrical"]),
)
def test_fuzzed_arguments_raise_python_errors(n, cols, dtype, depth, full_depth, offsets, bbox, clip, feat_rows, special, coords):
    rng = np.random.default_rng(n)
    p = rng.uniform(-1, 1, (n, cols)).astype(dtype)
    if special is not None and n and p.dtype.kind == "f":
        p.flat[rng.integers(p.size)] = special
    kw = dict(full_depth=full_depth, offsets=offsets, clip=clip, coords=coords)
    if bbox is not None:
        kw["bbox"] = ((bbox[0],) * 3, (bbox[1],) * 3)
    if feat_rows is not None:
        kw["features"] = np.ones((feat_rows, 2), np.float32)
    out = call(octformer.build_octree, p, depth, **kw)
    if isinstance(out, octformer.Octree):
        for d in range(out.depth + 1):
            call(out.neighbors, d, False)
    else:
        assert not isinstance(out, InternalError), f"bad input reported as an internal error: {out}"
        assert str(out).split(":")[0], out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    mutation=st.sampled_from(["table", "parent", "child", "reverse", "drop_row", "drop_child", "narrow"]),
    rows_all=st.booleans(),
    entries_all=st.booleans(),
)
def test_corrupted_neighbor_inputs_never_panic(seed, mutation, rows_all, entries_all):
    """The native neighbour step validates the parent table and level arrays an edited/unpickled Octree hands it."""
    rng = np.random.default_rng(seed)
    t = octformer.build_octree(rng.uniform(-1, 1, (60, 3)), 5, full_depth=1)
    d = int(rng.integers(1, 6))
    table = np.array(t.neighbors(d - 1)).copy()
    parent, children = t.children[d - 1].copy(), t.children[d].copy()
    if mutation == "table" and table.size:
        table[rng.integers(len(table)), rng.integers(27)] = rng.integers(-5, 3 * len(parent) + 5)
    elif mutation == "parent":
        parent[rng.integers(len(parent))] = rng.integers(-3, 2 * len(parent) + 2)
    elif mutation == "child" and children.size:
        children[rng.integers(len(children))] = rng.integers(-3, 2 * len(children) + 2)
    elif mutation == "reverse":
        parent = parent[::-1].copy()
    elif mutation == "drop_row":
        table = table[:-1].copy()
    elif mutation == "drop_child":
        children = children[:-1].copy()
    else:
        table = np.ascontiguousarray(table[:, :26])
    call(_core.neighbors_step, table, parent, children, rows_all=rows_all, entries_all=entries_all)
    call(_core.neighbors_root, parent if d == 1 else children, rows_all=rows_all, entries_all=entries_all)


def test_edited_octree_neighbors_raise_not_panic():
    t = octformer.build_octree(np.random.default_rng(1).uniform(-1, 1, (80, 3)), 5)
    t.children[3] = t.children[3][::-1].copy()
    out = call(t.neighbors, 4)
    assert isinstance(out, OctformerError), out


@pytest.mark.parametrize(
    "args",
    [
        # (points, offsets, origins, cells, depth, full_depth)
        (np.zeros((4, 3), np.float32), np.array([0, 4]), np.zeros((1, 3)), np.zeros((1, 3)), 5, 2),
        (np.zeros((4, 3), np.float32), np.array([0, 4]), np.zeros((1, 3)), np.full((1, 3), np.nan), 5, 2),
        (np.zeros((4, 3), np.float32), np.array([0, 9]), np.zeros((1, 3)), np.ones((1, 3)), 5, 2),
        (np.zeros((4, 3), np.float32), np.array([0, -2, 4]), np.zeros((2, 3)), np.ones((2, 3)), 5, 2),
        (np.zeros((4, 3), np.float32), np.array([0, 4]), np.zeros((2, 3)), np.ones((1, 3)), 5, 2),
        (np.zeros((4, 3), np.float32), np.array([0, 4]), np.zeros((1, 3)), np.ones((1, 3)), 0, 0),
        (np.zeros((4, 3), np.float32), np.array([0, 4]), np.zeros((1, 3)), np.ones((1, 3)), 300, 0),
        (np.zeros((4, 3), np.float32), np.array([0, 4]), np.zeros((1, 3)), np.ones((1, 3)), 5, 6),
        (np.zeros((4, 2), np.float32), np.array([0, 4]), np.zeros((1, 3)), np.ones((1, 3)), 5, 2),
        (np.zeros((4, 3), np.float32), np.array([], np.int64), np.zeros((0, 3)), np.zeros((0, 3)), 5, 2),
    ],
)
def test_native_build_checks_its_arguments(args):
    out = call(_core.build_octree, *args)
    assert isinstance(out, (OctformerError, OverflowError, TypeError)), out


@pytest.mark.parametrize(
    "values, leaf, num_leaves",
    [
        (np.ones((5, 2), np.float32), np.array([0, 1, 2, 3, 9]), 4),
        (np.ones((5, 2), np.float32), np.array([0, 1, 2, 3, -1]), 4),
        (np.ones((5, 2), np.float32), np.array([0, 1, 2]), 4),
        (np.ones((5, 0), np.float32), np.zeros(5, np.int64), 1),
        (np.ones((5, 2), np.float32), np.zeros(5, np.int64), -1),
    ],
)
def test_native_average_checks_its_arguments(values, leaf, num_leaves):
    out = call(_core.average_leaf_values, values, leaf, num_leaves)
    assert isinstance(out, (OctformerError, OverflowError)), out


# ------------------------------------------------------------------ Octree methods


def test_octree_method_arguments(pts):
    t = octformer.build_octree(pts, 5)
    for bad in (-1, 6, 2.0, True):
        with raises(OctformerError, "depth"):
            t.neighbors(bad)
        with raises(OctformerError, "depth"):
            t.xyz(bad)
    with raises(OctformerError, "trees"):
        octformer.Octree.merge([])
    with pytest.raises(OctformerError, match=r"^trees\[1\]\.depth"):
        octformer.Octree.merge([t, octformer.build_octree(pts, 6)])
    with pytest.raises(OctformerError, match=r"^trees\[1\]\.coords"):
        octformer.Octree.merge([t, octformer.build_octree(pts, 5, coords="cylindrical")])
    with pytest.raises(OctformerError, match=r"^trees\[1\]\.features"):
        octformer.Octree.merge([t, octformer.build_octree(pts, 5, features=pts)])


def test_merge_refuses_arrays_that_do_not_fit_their_tree(pts):
    """Corrupt ranks, batch ids or point->leaf indices raise, naming the tree and array."""
    good = octformer.build_octree(pts, 5)
    pair = octformer.build_octree(pts, 5, offsets=[0, 20, len(pts)])
    bad = dataclasses.replace(good, children=[c.copy() for c in good.children])
    c4 = bad.children[4]
    c4[np.flatnonzero(c4 >= 0)[-1]] = int(good.nnum_nempty[4])  # one past the last rank
    with raises(OctformerError, "trees") as info:
        octformer.Octree.merge([good, bad])
    assert "trees[1].children at depth 4" in str(info.value)
    bad = dataclasses.replace(pair, batch=[b.copy() for b in pair.batch])
    bad.batch[5][0] = 2  # a sample id the two-sample tree does not have
    with raises(OctformerError, "trees") as info:
        octformer.Octree.merge([good, bad])
    assert "trees[1].batch at depth 5" in str(info.value)
    bad = dataclasses.replace(good, point_leaf=good.point_leaf.copy())
    bad.point_leaf[3] = -1
    with raises(OctformerError, "trees") as info:
        octformer.Octree.merge([bad])
    assert "-1 in trees[0].point_leaf" in str(info.value)


def test_to_ocnn_refuses_depths_ocnn_cannot_hold(pts):
    pytest.importorskip("ocnn")
    with raises(OctformerError, "depth") as info:
        octformer.build_octree(pts.astype(np.float64), 17).to_ocnn()
    assert "16" in str(info.value)
