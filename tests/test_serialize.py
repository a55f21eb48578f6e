"""Curve serialization vs a NumPy transcription of Point Transformer V3's bit layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octformer import OctformerError
from octformer import serialize as S

# ---------------------------------------------------------------------------------------
# Reference: PTv3's encoders restated in NumPy (z: ocnn's 256-entry lookup tables with a
# 24-bit shift for the high byte; hilbert: Skilling's transform over an (N, 3, depth) bit
# tensor, MSB first, then Gray→binary by shift-xor over the interleaved bit string).


def _lut(shift: int) -> np.ndarray:
    out = np.zeros(256, dtype=np.int64)
    for i in range(256):
        for k in range(8):
            out[i] |= ((i >> k) & 1) << (3 * k + shift)
    return out


EX, EY, EZ = _lut(2), _lut(1), _lut(0)


def ptv3_z(xyz: np.ndarray, depth: int) -> np.ndarray:
    x, y, z = (xyz[:, i].astype(np.int64) for i in range(3))
    mask = 255 if depth > 8 else (1 << depth) - 1
    key = EX[x & mask] | EY[y & mask] | EZ[z & mask]
    if depth > 8:
        mask = (1 << (depth - 8)) - 1
        key16 = EX[(x >> 8) & mask] | EY[(y >> 8) & mask] | EZ[(z >> 8) & mask]
        key = key16 << 24 | key
    return key


def ptv3_hilbert(xyz: np.ndarray, num_bits: int) -> np.ndarray:
    n = xyz.shape[0]
    shifts = np.arange(num_bits - 1, -1, -1, dtype=np.int64)
    gray = ((xyz.astype(np.int64)[:, :, None] >> shifts) & 1).astype(np.uint8)  # (N, 3, bits)
    for bit in range(num_bits):
        for dim in range(3):
            mask = gray[:, dim, bit].copy()
            gray[:, 0, bit + 1 :] ^= mask[:, None]
            to_flip = (1 - mask)[:, None] & (gray[:, 0, bit + 1 :] ^ gray[:, dim, bit + 1 :])
            gray[:, dim, bit + 1 :] ^= to_flip
            gray[:, 0, bit + 1 :] ^= to_flip
    flat = gray.swapaxes(1, 2).reshape(n, 3 * num_bits)
    length = flat.shape[1]
    shift = 2 ** (int(np.ceil(np.log2(length))) - 1)
    while shift > 0:  # gray2binary: xor with right shifts of halving size
        shifted = np.zeros_like(flat)
        shifted[:, shift:] = flat[:, :-shift]
        flat = flat ^ shifted
        shift //= 2
    weights = np.array([1 << (length - 1 - i) for i in range(length)], dtype=np.int64)
    return (flat.astype(np.int64) * weights).sum(axis=1)


def ptv3_encode(xyz: np.ndarray, depth: int, order: str) -> np.ndarray:
    if order.endswith("-trans"):
        xyz = xyz[:, [1, 0, 2]]
    return ptv3_z(xyz, depth) if order.startswith("z") else ptv3_hilbert(xyz, depth)


@st.composite
def grids(draw, max_depth: int = 16, max_n: int = 300):
    depth = draw(st.integers(1, max_depth))
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    hi = 1 << depth
    xyz = rng.integers(0, hi, size=(n, 3))
    # include the corners and repeated cells, where bit tricks break
    xyz[0] = hi - 1
    if n > 2:
        xyz[1] = 0
        xyz[2] = xyz[n // 2]
    return xyz, depth, rng


# ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(grids())
def test_codes_equal_ptv3_transcription(case):
    xyz, depth, _ = case
    s = S.serialize(xyz, depth=depth)
    assert s.orders == S.ORDERS
    for k, order in enumerate(s.orders):
        np.testing.assert_array_equal(s.codes[k], ptv3_encode(xyz, depth, order), err_msg=order)
        np.testing.assert_array_equal(S.encode(xyz, order, depth=depth), s.codes[k])


@settings(max_examples=40, deadline=None)
@given(grids())
def test_batched_sort_equals_ptv3_argsort(case):
    """PTv3 sorts (batch << 3·depth | code); ours must give that order and its inverse."""
    xyz, depth, rng = case
    n = xyz.shape[0]
    batch = np.sort(rng.integers(0, 4, n))
    s = S.serialize(xyz, depth=depth, batch=batch)
    for k, order in enumerate(s.orders):
        packed = (batch.astype(np.int64) << (3 * depth)) | ptv3_encode(xyz, depth, order)
        expected = np.argsort(packed, kind="stable")
        np.testing.assert_array_equal(s.perm[k], expected)
        inv = np.empty(n, dtype=np.int64)
        inv[expected] = np.arange(n)
        np.testing.assert_array_equal(s.inverse[k], inv)


def test_default_depth_is_bit_length_of_max():
    xyz = np.array([[0, 5, 1], [3, 2, 200]])
    assert S.serialize(xyz).depth == int(200).bit_length()
    assert S.serialize(np.zeros((2, 3), dtype=np.int32)).depth == 1


@settings(max_examples=60, deadline=None)
@given(grids(max_depth=21))
def test_decode_inverts_encode_up_to_depth_21(case):
    xyz, depth, _ = case
    s = S.serialize(xyz, depth=depth)
    for k, order in enumerate(s.orders):
        assert s.codes[k].max() < 2 ** (3 * depth)
        np.testing.assert_array_equal(S.decode(s.codes[k], order, depth), xyz, err_msg=order)


@settings(max_examples=40, deadline=None)
@given(grids(max_depth=21), st.integers(1, 70000))
def test_perms_are_permutations_and_batches_stay_ordered(case, num_samples):
    xyz, depth, rng = case
    n = xyz.shape[0]
    batch = rng.integers(0, num_samples, n)  # unsorted, possibly > 2^16 samples
    s = S.serialize(xyz, depth=depth, batch=batch)
    for k in range(len(s.orders)):
        perm, inv, code = s.perm[k], s.inverse[k], s.codes[k]
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
        np.testing.assert_array_equal(inv[perm], np.arange(n))
        np.testing.assert_array_equal(perm[inv], np.arange(n))
        # (batch, code, index) strictly increasing along the order: lexsort is the oracle
        np.testing.assert_array_equal(perm, np.lexsort((np.arange(n), code, batch)))
        assert np.all(np.diff(batch[perm]) >= 0)


def test_deep_codes_with_many_samples_need_no_bit_budget():
    """Depth 21 (63 bits) with 100k samples: PTv3's 3·depth + batch bits ≤ 63 assert would fire."""
    rng = np.random.default_rng(5)
    n = 50_000
    xyz = rng.integers(0, 2**21, (n, 3))
    batch = rng.integers(0, 100_000, n)
    s = S.serialize(xyz, depth=21, batch=batch, orders=("hilbert", "z"))
    for k in range(2):
        np.testing.assert_array_equal(s.perm[k], np.lexsort((s.codes[k], batch)))


def test_same_result_for_one_and_two_threads():
    rng = np.random.default_rng(9)
    n = 150_000  # above the parallel thresholds
    xyz = rng.integers(0, 4096, (n, 3))
    batch = np.sort(rng.integers(0, 3, n))
    a = S.serialize(xyz, batch=batch, num_threads=1)
    b = S.serialize(xyz, batch=batch, num_threads=2)
    for f in ("codes", "perm", "inverse"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_accepts_torch_and_int32():
    torch = pytest.importorskip("torch")
    xyz = np.random.default_rng(1).integers(0, 100, (50, 3)).astype(np.int32)
    a = S.serialize(xyz)
    b = S.serialize(torch.from_numpy(xyz))
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.codes[0], ptv3_z(xyz, a.depth))


def test_order_for_block_is_deterministic_in_eval_and_seeded_in_training():
    assert [S.order_for_block(i, 4) for i in range(6)] == [0, 1, 2, 3, 0, 1]
    a = [S.order_for_block(i, 4, training=True, seed=7) for i in range(4)]
    b = [S.order_for_block(i, 4, training=True, seed=7) for i in range(4)]
    assert a == b and sorted(a) == [0, 1, 2, 3]
    seen = {tuple(S.order_for_block(i, 4, training=True, seed=s) for i in range(4)) for s in range(40)}
    assert len(seen) > 1  # the seed actually changes the assignment
    with pytest.raises(OctformerError, match="seed"):
        S.order_for_block(0, 4, training=True)


def test_shuffled_permutes_rows_reproducibly():
    xyz = np.random.default_rng(2).integers(0, 64, (100, 3))
    s = S.serialize(xyz)
    a, b = s.shuffled(3), s.shuffled(3)
    assert a.orders == b.orders and sorted(a.orders) == sorted(s.orders)
    for k, order in enumerate(a.orders):
        row = s.orders.index(order)
        np.testing.assert_array_equal(a.codes[k], s.codes[row])
        np.testing.assert_array_equal(a.perm[k], s.perm[row])
        np.testing.assert_array_equal(a.inverse[k], s.inverse[row])
    assert len({s.shuffled(seed).orders for seed in range(30)}) > 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"grid_coords": [[0, -1, 0]]}, "grid_coords"),
        ({"grid_coords": [[0, 16, 0]], "depth": 4}, "grid_coords"),
        ({"grid_coords": [[2**21, 0, 0]]}, "grid_coords"),
        ({"grid_coords": [[0.5, 1, 0]]}, "grid_coords"),
        ({"grid_coords": [[0, 1]]}, "grid_coords"),
        ({"grid_coords": [[0, 1, 0]], "depth": 22}, "depth"),
        ({"grid_coords": [[0, 1, 0]], "depth": 0}, "depth"),
        ({"grid_coords": [[0, 1, 0]], "depth": 2.0}, "depth"),
        ({"grid_coords": [[0, 1, 0]], "batch": [0, 0]}, "batch"),
        ({"grid_coords": [[0, 1, 0]], "batch": [0.0]}, "batch"),
        ({"grid_coords": [[0, 1, 0]], "batch": [-1]}, "batch"),
        ({"grid_coords": [[0, 1, 0]], "orders": ("z", "peano")}, "orders"),
        ({"grid_coords": [[0, 1, 0]], "orders": ("z", "z")}, "orders"),
        ({"grid_coords": [[0, 1, 0]], "orders": ()}, "orders"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    coords = kwargs.pop("grid_coords")
    with pytest.raises(OctformerError, match=f"^{name}: expected"):
        S.serialize(coords, **kwargs)


def test_decode_rejects_codes_beyond_depth():
    with pytest.raises(OctformerError, match="^codes: expected"):
        S.decode(np.array([1 << 12]), "hilbert", 4)
    with pytest.raises(OctformerError, match="^codes: expected"):
        S.decode(np.array([-1]), "z", 4)
    with pytest.raises(OctformerError, match="^order: expected"):
        S.decode(np.array([1]), "zz", 4)


def test_native_calls_reject_fortran_order_coordinates() -> None:
    """A Fortran-order (N, 3) array is contiguous but column-major: the native module must
    refuse it (reading it flat would silently mix x, y and z), while the wrappers copy it."""
    from octformer import _core

    rng = np.random.default_rng(3)
    c_order = rng.integers(0, 64, size=(50, 3), dtype=np.int64)
    f_order = np.asfortranarray(c_order)
    with pytest.raises(OctformerError, match="grid_coords"):
        _core.serialize(f_order, ["z"], 6, None, 1)
    with pytest.raises(OctformerError, match="grid_coords"):
        _core.flatten_windows(f_order, (4, 4, 4), 8)
    # the public wrappers accept either layout and give the same answer
    a, b = S.serialize(c_order, depth=6), S.serialize(f_order, depth=6)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.perm, b.perm)
