"""FlatFormer window plans and curve-order patch plans vs plain NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octformer import OctformerError
from octformer import serialize as S

# ---------------------------------------------------------------------------------------
# References


def lexsort_window_order(xyz, batch, window, axis, shift):
    """Window order by np.lexsort over the documented fields (outermost key last)."""
    n = xyz.shape[0]
    w = np.asarray(window, dtype=np.int64)
    q = xyz.astype(np.int64) + (w // 2 if shift else 0)
    win, off = q // w, q % w
    a, c = (1, 0) if axis == "x" else (0, 1)
    odd_row = win[:, a] % 2 == 1
    wc = np.where(odd_row, win[:, c].max() - win[:, c], win[:, c])
    oc = np.where(odd_row, w[c] - 1 - off[:, c], off[:, c])
    oa = np.where((off[:, c] + win[:, a]) % 2 == 1, w[a] - 1 - off[:, a], off[:, a])
    b = np.zeros(n, dtype=np.int64) if batch is None else batch
    return np.lexsort((np.arange(n), off[:, 2], oa, oc, wc, win[:, a], win[:, 2], b))


def flatformer_key(xy, batch, wx, wy, axis, shift):
    """FlatFormer's published 2-D sort key with doubled radices (mit-han-lab/flatformer)."""
    x, y = xy[:, 0].astype(np.int64), xy[:, 1].astype(np.int64)
    if shift:
        x, y = x + wx // 2, y + wy // 2
    X, Y, u, v = x // wx, y // wy, x % wx, y % wy
    Wx, Wy = 2 * wx, 2 * wy
    sign = lambda t: 1 - 2 * (t % 2)  # noqa: E731  (-1)^t
    big = np.int64(1) << 40
    if axis == "x":
        Nx = 2 * (X.max() + 1)
        k = (Nx * Y + sign(Y) * X) * Wx * Wy + sign(Y) * (Wy * u + sign(u) * v)
    else:
        Ny = 2 * (Y.max() + 1)
        k = (Ny * X + sign(X) * Y) * Wx * Wy + sign(X) * (Wx * v + sign(v) * u)
    return k + batch.astype(np.int64) * big


def reference_plan(order, batch, g):
    """Per-sample loop: short samples stay short, long ones pad slot j with slot j - g."""
    n = order.shape[0]
    b = np.zeros(n, dtype=np.int64) if batch is None else batch
    gather, scatter = [], np.full(n, -1, dtype=np.int64)
    cu, seq_sample = [0], []
    for s in range(int(b.max()) + 1 if n else 0):
        toks = [int(t) for t in order if b[t] == s]
        m = len(toks)
        if m == 0:
            continue
        slots = list(toks)
        if m > g:
            slots += [None] * (-(-m // g) * g - m)
            for j in range(m, len(slots)):
                slots[j] = slots[j - g]
        base = len(gather)
        for j, t in enumerate(toks):
            scatter[t] = base + j
        gather += slots
        for start in range(0, len(slots), g):
            cu.append(base + min(start + g, len(slots)))
            seq_sample.append(s)
    return np.array(gather, dtype=np.int64), scatter, np.array(cu), np.array(seq_sample)


def check_plan_properties(plan, batch, n, g):
    b = np.zeros(n, dtype=np.int64) if batch is None else batch
    assert plan.gather.dtype == np.int64 and plan.scatter.dtype == np.int64
    assert plan.cu_seqlens.dtype == np.int32 and plan.cu_seqlens[0] == 0 and plan.cu_seqlens[-1] == plan.num_padded
    # every real token is read back exactly once, from a slot that holds it
    np.testing.assert_array_equal(plan.gather[plan.scatter], np.arange(n))
    assert np.unique(plan.scatter).size == n
    lens = np.diff(plan.cu_seqlens)
    assert plan.max_seqlen == (lens.max() if lens.size else 0)
    counts = np.bincount(b, minlength=int(b.max()) + 1 if n else 0)
    for k, (lo, hi) in enumerate(zip(plan.cu_seqlens[:-1], plan.cu_seqlens[1:])):
        samples = b[plan.gather[lo:hi]]
        assert np.all(samples == plan.seq_sample[k]), "a sequence crosses samples"
        size = counts[plan.seq_sample[k]]
        assert hi - lo == (size if size <= g else g)
    # group_size >= a sample's length ⇒ that sample is one sequence
    for s, c in enumerate(counts):
        nseq = int(np.sum(plan.seq_sample == s))
        assert nseq == (0 if c == 0 else 1 if c <= g else -(-c // g))
    x = np.random.default_rng(0).standard_normal((n, 4))
    np.testing.assert_array_equal(x[plan.gather][plan.scatter], x)


@st.composite
def clouds(draw):
    n = draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    extent = draw(st.integers(1, 120))
    xyz = rng.integers(0, extent, (n, 3))
    samples = draw(st.integers(1, 5))
    batch = None if samples == 1 else rng.integers(0, samples, n)
    return xyz, batch


windows = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12))

# ---------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(clouds(), windows, st.integers(1, 80), st.sampled_from(["x", "y"]), st.booleans())
def test_window_plan_matches_lexsort_reference(cloud, window, g, axis, shift):
    check_against_lexsort_reference(cloud, window, g, axis, shift)


def check_against_lexsort_reference(cloud, window, g, axis, shift):
    xyz, batch = cloud
    plan = S.flatten(xyz, batch=batch, window=window, group_size=g, axis=axis, shift=shift)
    order = lexsort_window_order(xyz, batch, window, axis, shift)
    # real tokens in slot order are the window order
    np.testing.assert_array_equal(plan.gather[np.sort(plan.scatter)], order)
    gather, scatter, cu, seq_sample = reference_plan(order, batch, g)
    np.testing.assert_array_equal(plan.gather, gather)
    np.testing.assert_array_equal(plan.scatter, scatter)
    np.testing.assert_array_equal(plan.cu_seqlens, cu)
    np.testing.assert_array_equal(plan.seq_sample, seq_sample)
    check_plan_properties(plan, batch, xyz.shape[0], g)


pow2_windows = st.tuples(*[st.sampled_from([1, 2, 4, 8, 16, 64])] * 3)


@settings(max_examples=60, deadline=None)
@given(clouds(), pow2_windows, st.integers(1, 80), st.sampled_from(["x", "y"]), st.booleans())
def test_power_of_two_windows_match_lexsort_reference(cloud, window, g, axis, shift):
    """All-power-of-two windows take a separate (shift and mask) key path in the core."""
    check_against_lexsort_reference(cloud, window, g, axis, shift)


@settings(max_examples=60, deadline=None)
@given(clouds(), st.integers(1, 15), st.integers(1, 15), st.sampled_from(["x", "y"]), st.booleans())
def test_2d_order_equals_flatformer_key(cloud, wx, wy, axis, shift):
    xyz, batch = cloud
    xyz = xyz.copy()
    xyz[:, 2] = 0  # BEV pillars, as in FlatFormer
    b = np.zeros(xyz.shape[0], dtype=np.int64) if batch is None else batch
    plan = S.flatten(xyz, batch=batch, window=(wx, wy, 1), group_size=10_000, axis=axis, shift=shift)
    expected = np.argsort(flatformer_key(xyz, b, wx, wy, axis, shift), kind="stable")
    np.testing.assert_array_equal(plan.gather[np.sort(plan.scatter)], expected)


@settings(max_examples=60, deadline=None)
@given(clouds(), st.integers(1, 64), st.sampled_from(S.ORDERS))
def test_patch_plan_follows_the_curve_order(cloud, patch, order):
    xyz, batch = cloud
    s = S.serialize(xyz, batch=batch)
    plan = S.patches(s, order, patch)
    perm = s.perm[s.orders.index(order)]
    np.testing.assert_array_equal(plan.gather[np.sort(plan.scatter)], perm)
    gather, scatter, cu, _ = reference_plan(perm, batch, patch)
    np.testing.assert_array_equal(plan.gather, gather)
    np.testing.assert_array_equal(plan.scatter, scatter)
    np.testing.assert_array_equal(plan.cu_seqlens, cu)
    check_plan_properties(plan, batch, xyz.shape[0], patch)
    assert plan.group_size == patch


def test_short_sample_is_one_sequence_and_long_sample_pads_inside_itself():
    rng = np.random.default_rng(4)
    xyz = rng.integers(0, 50, (110, 3))
    batch = np.array([0] * 5 + [1] * 100 + [2] * 5)  # short, long, short
    plan = S.flatten(xyz, batch=batch, window=(8, 8, 8), group_size=32)
    assert plan.seq_sample.tolist() == [0, 1, 1, 1, 1, 2]
    assert np.diff(plan.cu_seqlens).tolist() == [5, 32, 32, 32, 32, 5]
    pads = plan.gather[5 + 100 : 5 + 128]  # the 28 duplicates of sample 1
    assert np.all(batch[pads] == 1)


def test_same_plan_for_one_and_two_threads():
    rng = np.random.default_rng(8)
    n = 200_000
    xyz = rng.integers(0, 2000, (n, 3))
    batch = rng.integers(0, 3, n)
    for shift in (False, True):
        a = S.flatten(xyz, batch=batch, window=(13, 13, 64), group_size=144, axis="y", shift=shift, num_threads=1)
        b = S.flatten(xyz, batch=batch, window=(13, 13, 64), group_size=144, axis="y", shift=shift, num_threads=2)
        for f in ("gather", "scatter", "cu_seqlens", "seq_sample"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    s = S.serialize(xyz, batch=batch)
    a, b = S.patches(s, "hilbert", 1024, num_threads=1), S.patches(s, "hilbert", 1024, num_threads=2)
    np.testing.assert_array_equal(a.gather, b.gather)
    np.testing.assert_array_equal(a.scatter, b.scatter)


def test_gather_then_scatter_reproduces_torch_features():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    xyz = rng.integers(0, 300, (5000, 3))
    batch = np.sort(rng.integers(0, 4, 5000))
    plan = S.flatten(xyz, batch=batch, window=(9, 9, 300), group_size=69, shift=True)
    t = plan.to_torch()
    x = torch.randn(5000, 16)
    torch.testing.assert_close(x[t["gather"]][t["scatter"]], x, rtol=0, atol=0)
    assert t["cu_seqlens"].dtype == torch.int32


def test_deep_coordinates_use_a_wide_key():
    """Coordinates near 2^31 with many samples exceed 64 key bits; order must still hold."""
    rng = np.random.default_rng(6)
    xyz = rng.integers(0, 2**31 - 1, (3000, 3))
    batch = rng.integers(0, 70_000, 3000)
    plan = S.flatten(xyz, batch=batch, window=(3, 5, 7), group_size=4)
    order = lexsort_window_order(xyz, batch, (3, 5, 7), "x", False)
    np.testing.assert_array_equal(plan.gather[np.sort(plan.scatter)], order)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"grid_coords": [[0, -1, 0]]}, "grid_coords"),
        ({"grid_coords": [[0.0, 1, 0]]}, "grid_coords"),
        ({"window": (0, 2, 2)}, "window"),
        ({"window": (2, 2)}, "window"),
        ({"group_size": 0}, "group_size"),
        ({"axis": "z"}, "axis"),
        ({"batch": [0, 1]}, "batch"),
        ({"batch": [-1]}, "batch"),
        ({"shift": "yes"}, "shift"),
    ],
)
def test_flatten_bad_input_names_the_argument(kwargs, name):
    args = {"grid_coords": [[0, 1, 0]], "window": (2, 2, 2), "group_size": 4} | kwargs
    coords = args.pop("grid_coords")
    with pytest.raises(OctformerError, match=f"^{name}: expected"):
        S.flatten(coords, **args)


def test_patches_bad_input_names_the_argument():
    s = S.serialize(np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(OctformerError, match="^patch_size: expected"):
        S.patches(s, "z", 0)
    with pytest.raises(OctformerError, match="^order: expected"):
        S.patches(s, "peano", 4)
    with pytest.raises(OctformerError, match="^serialization: expected"):
        S.patches(s.perm, "z", 4)
