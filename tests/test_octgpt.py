"""OctGPT internals: level-causal window attention against a dense pairwise-mask oracle, causality of the
whole model across levels, and the token sequence <-> octree bijection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from octformer.io import read_points
from octformer.models import create_model
from octformer.nn.attention import level_causal_window_attention


def dense_level_causal_attention(q, k, v, slot_levels, group_size, key_mask):
    """Oracle: the old formulation, one (windows, K, K) additive mask (finer keys and padding -inf), softmax per
    window; queries with no visible key give 0."""
    m, h, c = q.shape
    g = m // group_size
    lv = slot_levels.view(g, group_size)
    pair = torch.where(lv[:, None, :] > lv[:, :, None], float("-inf"), 0.0).to(q.dtype)
    pair = pair + key_mask.view(g, 1, group_size)
    grp = [t.view(g, group_size, h, c).transpose(1, 2) for t in (q, k, v)]
    logits = grp[0] @ grp[1].transpose(-1, -2) * c**-0.5 + pair[:, None]
    dead = torch.isinf(logits).all(-1, keepdim=True)
    probs = torch.softmax(logits.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    return (probs @ grp[2]).transpose(1, 2).reshape(m, h, c)


@pytest.mark.parametrize("backend", ["auto", "torch", "kernels"])
@pytest.mark.parametrize("sorted_levels", [True, False])
def test_level_causal_attention_matches_dense_mask_oracle(backend, sorted_levels):
    from octformer.ops import kernels_available

    if backend == "kernels" and not kernels_available("cpu"):
        pytest.skip("octformer_kernels is not installed")
    gen = torch.Generator().manual_seed(3)
    groups, kk, h, c = 7, 16, 3, 8
    m = groups * kk
    levels = torch.randint(0, 4, (m,), generator=gen)
    if sorted_levels:  # OctGPT's layout: levels never decrease inside a window
        levels = levels.view(groups, kk).sort(1).values.reshape(-1)
    levels[:kk] = 2  # one single-level window
    key_mask = torch.where(torch.rand(m, generator=gen) < 0.2, float("-inf"), 0.0)
    key_mask[kk : 2 * kk] = float("-inf")  # one window of padding only
    q, k, v = (torch.randn(m, h, c, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    if backend == "kernels":
        q, k, v = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    got = level_causal_window_attention(q, k, v, levels, kk, key_mask.to(q.dtype), backend)
    want = dense_level_causal_attention(q, k, v, levels, kk, key_mask.to(q.dtype))
    tol = {"rtol": 1e-10, "atol": 1e-12} if q.dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(got, want, **tol)
    w = torch.randn(got.shape, generator=gen, dtype=got.dtype)
    g1 = torch.autograd.grad((got * w).sum(), (q, k, v))
    g2 = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **tol)


@pytest.fixture(scope="module")
def bunny_tree(shared_data):
    pts = read_points(shared_data / "stanford_bunny" / "reconstruction" / "bun_zipper.ply").points.astype(np.float64)
    torch.manual_seed(0)
    model = create_model("octgpt_tiny", backend="torch", window=32).eval()
    return model, model.build_input([pts])


def test_octgpt_outputs_of_a_level_do_not_depend_on_finer_levels(bunny_tree):
    model, tree = bunny_tree
    seq = model.sequence(tree)
    level = torch.as_tensor(seq["level"])
    gen = torch.Generator().manual_seed(0)
    mask_a = torch.rand(level.shape, generator=gen) < 0.5
    with torch.no_grad():
        out_a = model(tree, mask_a)
        for cut in range(1, model.num_levels):
            mask_b = torch.where(level >= cut, ~mask_a, mask_a)  # change every input at levels >= cut
            out_b = model(tree, mask_b)
            coarse = level < cut
            assert torch.equal(out_a[coarse], out_b[coarse])
            assert not torch.allclose(out_a[level == cut], out_b[level == cut])  # the change is visible there


def test_octgpt_sequence_and_finer_flags_rebuild_the_octree(bunny_tree):
    from octformer import format as octf

    model, tree = bunny_tree
    seq = model.sequence(tree)
    flags = octf.split_flags(tree)[0].astype(np.int64)
    mine = seq["value"][seq["value"] >= 0]
    # the flags after the sequence's split levels are what the VQVAE decodes from the codes
    rebuilt = octf.from_split_flags([np.concatenate([mine, flags[mine.size:]])], model.depth, model.full_depth)
    assert octf.split_flags(rebuilt)[0].tolist() == flags.tolist()
    assert np.array_equal(rebuilt.xyz(model.depth), tree.xyz(model.depth))
    # one code token per non-empty depth_stop node, in key order
    codes_xyz = seq["xyz"][seq["value"] < 0]
    assert np.array_equal(codes_xyz, tree.xyz(model.depth_stop))


def test_octgpt_block_checkpointing_gives_the_same_loss_and_gradients(bunny_tree):
    model, tree = bunny_tree
    grads = []
    for checkpoint in (False, True):
        model.checkpoint = checkpoint
        model.zero_grad()
        loss = model.loss(tree, torch.Generator().manual_seed(7))["loss"]
        loss.backward()
        grads.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    model.checkpoint = False
    assert grads[0][0] == grads[1][0]
    assert grads[0][1].keys() == grads[1][1].keys() and len(grads[0][1]) > 10
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-5, atol=1e-7, msg=name)


# A few-channel version of OctGPT's published VQVAE for octgpt_tiny's layout (depth 5, codes at depth 4).
TINY_VQVAE = dict(bottleneck=1, enc_channels=(8, 16), enc_blocks=(1, 1), dec_enc_channels=(16, 32),
                  dec_enc_blocks=(1, 1), dec_dec_channels=(32, 16, 8), dec_dec_blocks=(1, 2, 1), pred_stages=2,
                  sdf_stages=2)


def test_face_neighbors_match_a_brute_force_search():
    from octformer.models.octgpt_vqvae import face_neighbors

    rng = np.random.default_rng(3)
    cells = np.unique(np.concatenate([rng.integers(0, 2, (400, 1)), rng.integers(0, 8, (400, 3))], 1), axis=0)
    batch, xyz = torch.from_numpy(cells[:, 0]), torch.from_numpy(cells[:, 1:])
    got = face_neighbors(xyz, batch, 3)
    index = {tuple(c): i for i, c in enumerate(cells.tolist())}
    for i, (b, x, y, z) in enumerate(cells.tolist()):
        want = [index.get((b, x + dx, y + dy, z + dz), -1)
                for dx, dy, dz in ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))]
        assert got[i].tolist() == want


def test_published_vqvae_forward_backward_on_the_bunny(shared_data):
    """The published VQVAE architecture (few channels) on real octrees: split logits for every node of the
    decoded depths, a finite loss (splits + BSQ + SDF), a gradient for every parameter, and decoding that
    rebuilds an octree."""
    from octformer import format as octf
    from octformer.models.octgpt_vqvae import OctGPTVQVAE, bsq_quantize
    from octformer.nn import OctreeContext

    pts = read_points(shared_data / "stanford_bunny" / "reconstruction" / "bun_zipper.ply").points.astype(np.float64)
    torch.manual_seed(0)
    model = create_model("octgpt_tiny", backend="torch", vq_arch=TINY_VQVAE)
    vq = model.vqvae
    assert isinstance(vq, OctGPTVQVAE) and vq.low == 3
    tree = model.build_input([pts, pts[::3] @ np.diag([1.0, 0.6, 1.0])])
    ctx = OctreeContext(tree)
    z = vq.encode(ctx)
    assert z.shape == (ctx.num_nodes(4), 8)
    out = vq._decode(bsq_quantize(z)[0], ctx, teacher=True)
    assert sorted(out["logits"]) == sorted(out["signals"]) == [4, 5]
    for d in (4, 5):
        lv = out["levels"][d]
        assert out["logits"][d].shape == (8 * ctx.num_nodes(d - 1), 2)
        assert torch.equal(lv.xyz[lv.nonempty], ctx.xyz(d)) and torch.equal(lv.batch[lv.nonempty], ctx.batch(d))
    # SDF targets: the centres of the finest non-empty cells lie on the surface (0)
    cells = ctx.xyz(5).double() + 0.5
    sdf = (cells, ctx.batch(5), torch.zeros(cells.shape[0]))
    loss = model.vqvae_loss(tree, sdf)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in vq.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # decoding one sample's codes grows the finer depths from the predicted splits, on the octree down to
    # depth_stop that the transformer's split tokens give
    single = model.build_input([pts])
    seq = model.sequence(single)
    coarse_flags = seq["value"][seq["value"] >= 0].astype(np.uint8)
    coarse = OctreeContext(octf.from_split_flags([coarse_flags], 4, 2))
    codes = bsq_quantize(vq.encode(OctreeContext(single)))[0]
    flags = vq.decode_flags(codes, coarse)
    assert len(flags) == 1 and flags[0].shape == (8 * coarse.num_nodes(4),)
    assert flags[0].reshape(-1, 8).any(1).all()  # every non-empty depth-4 node keeps a child
    rebuilt = octf.from_split_flags([np.concatenate([coarse_flags, flags[0].numpy().astype(np.uint8)])], 5, 2)
    assert np.array_equal(rebuilt.xyz(4), single.xyz(4)) and rebuilt.depth == 5


def test_octgpt_with_the_published_vqvae_trains_and_samples(bunny_tree):
    _, tree = bunny_tree
    torch.manual_seed(0)
    model = create_model("octgpt_tiny", backend="torch", window=32, vq_arch=TINY_VQVAE)
    losses = model.loss(tree, torch.Generator().manual_seed(1))
    assert torch.isfinite(losses["loss"]) and float(losses["vqvae"]) > 0
    losses["loss"].backward()
    for name, p in model.vqvae.named_parameters():  # the SDF heads train only on SDF targets
        assert (p.grad is None) == name.startswith("sdf_heads."), name
    with torch.no_grad():
        gen = model.eval().generate(1, iterations=(1, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert gen.depth == 5 and gen.numpy().nnum_nempty[5] > 0


def test_published_vqvae_checkpointing_gives_the_same_loss_and_gradients(bunny_tree):
    from octformer.nn import OctreeContext

    _, tree = bunny_tree
    torch.manual_seed(0)
    model = create_model("octgpt_tiny", backend="torch", vq_arch=TINY_VQVAE)
    assert model.vqvae.checkpoint is False
    grads = []
    for checkpoint in (False, True):
        model.vqvae.checkpoint = checkpoint
        model.zero_grad()
        loss = model.vqvae.reconstruction_loss(OctreeContext(tree))
        loss.backward()
        named = model.vqvae.named_parameters()
        grads.append((float(loss), {n: p.grad.clone() for n, p in named if p.grad is not None}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert grads[0][1].keys() == grads[1][1].keys()
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-4, atol=1e-6, msg=name)
