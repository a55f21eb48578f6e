"""Generic, registry-parametrised model tests (timm style) on real clouds from ../shared/data.

Every registered model honours one interface: ``build_input(points) -> Octree``,
``forward(octree)``, ``split_output(out, octree)``. The forward tests run the ``*_tiny``
configs; the published configs are built on the meta device for their parameter counts.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import octformer
from octformer.errors import OctformerError
from octformer.io import read_points
from octformer.models import create_model, list_models

TINY = list_models("*_tiny")


@pytest.fixture(scope="module")
def clouds(shared_data):
    """Two real, differently sized lidar crops of the SemanticKITTI scan (a near disc and a far sector)."""
    pts = read_points(shared_data / "semantickitti" / "velodyne" / "000000.bin").points.astype(np.float64)
    r = np.linalg.norm(pts[:, :2], axis=1)
    ang = np.arctan2(pts[:, 1], pts[:, 0])
    near = pts[r < 6.0]
    far = pts[(r > 8.0) & (r < 14.0) & (np.abs(ang) < 1.2)]
    rng = np.random.default_rng(0)
    near = near[rng.permutation(len(near))[:3000]]
    far = far[rng.permutation(len(far))[:3000]]
    return near, far


def _model(name: str, **kw):
    """The model on the torch reference attention (the compiled backend is compared separately below)."""
    torch.manual_seed(0)
    return create_model(name, **{"backend": "torch", **kw})


def test_registry_lists_every_family_and_rejects_unknown_names():
    names = list_models()
    for expected in ("volt_s", "volt_b", "volt_tiny"):
        assert expected in names
    assert octformer.list_models() == names and octformer.create_model is create_model
    assert TINY and all(n.endswith("_tiny") for n in TINY)
    with pytest.raises(OctformerError, match="name: expected one of"):
        create_model("volt_xxl")
    with pytest.raises(OctformerError, match="unknown"):
        create_model("volt_tiny", not_an_option=3)


@pytest.mark.parametrize("name", TINY)
def test_forward_shapes_and_finite(name, clouds):
    model = _model(name).eval()
    tree = model.build_input(list(clouds))
    with torch.no_grad():
        out = model(tree)
    parts = model.split_output(out, tree)
    assert len(parts) == 2
    if model.output_kind == "tokens":
        assert out.shape[0] == sum(model.output_counts(tree))
        assert [p.shape[0] for p in parts] == model.output_counts(tree)
    else:
        assert out.shape[0] == 2
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TINY)
def test_backward_reaches_every_parameter(name, clouds):
    model = _model(name, drop_path=0.0).train()
    tree = model.build_input(list(clouds))
    out = model(tree)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    loss = (out * weights).sum()
    if hasattr(model, "auxiliary_loss"):  # parts trained by their own loss (OctGPT's VQVAE)
        loss = loss + model.auxiliary_loss(tree)
    loss.backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    zero = [n for n, p in params.items() if not torch.isfinite(p.grad).all() or float(p.grad.abs().sum()) == 0.0]
    assert not zero, f"parameters with a zero or non-finite gradient: {zero}"


@pytest.mark.parametrize("name", TINY)
def test_forward_bitwise_deterministic(name, clouds):
    outs = []
    for _ in range(2):
        model = _model(name).eval()
        with torch.no_grad():
            outs.append(model(model.build_input(list(clouds))))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", TINY)
def test_state_dict_round_trip(name, clouds):
    a = _model(name).eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    torch.manual_seed(123)  # a differently initialised twin
    b = create_model(name, backend="torch").eval()
    tree = a.build_input([clouds[0]])
    with torch.no_grad():
        assert not torch.equal(a(tree), b(tree))
        buf.seek(0)
        b.load_state_dict(torch.load(buf, weights_only=True))
        assert torch.equal(a(tree), b(tree))


@pytest.mark.parametrize("name", TINY)
def test_batch_of_two_equals_samples_alone(name, clouds):
    model = _model(name).eval()
    with torch.no_grad():
        tree = model.build_input(list(clouds))
        together = model.split_output(model(tree), tree)
        for i, cloud in enumerate(clouds):
            alone = model(model.build_input([cloud]))
            assert together[i].shape == alone.squeeze(0).shape if model.output_kind == "samples" else alone.shape
            torch.testing.assert_close(together[i], alone.squeeze(0) if model.output_kind == "samples" else alone,
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.kernels
@pytest.mark.parametrize("name", TINY)
def test_compiled_attention_backend_matches_torch_reference(name, clouds):
    from octformer.ops import kernels_available

    if not kernels_available("cpu"):
        pytest.skip("octformer_kernels is not installed")
    ref = _model(name).eval()
    fast = _model(name, backend="kernels").eval()
    fast.load_state_dict(ref.state_dict())
    tree = ref.build_input([clouds[0]])
    with torch.no_grad():
        torch.testing.assert_close(fast(tree), ref(tree), rtol=1e-4, atol=1e-5)


# Published figures from the research notes (../shared/research): HOTFormerLoc 35.3M parameters
# (Oxford config). Volt has no published count there; it is checked against a closed-form formula.
PUBLISHED_PARAMS = {"hotformerloc": 35.3e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_parameter_counts_within_two_percent(name):
    with torch.device("meta"):
        model = create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.02, count


# OctGPT's released VQVAE sizes (research notes §A2 and OctGPT's utils/builder.py): "vqvae_large" (the ShapeNet
# config's) 33.9M, "vqvae_big" 8.0M, the default "vqvae" 4.2M.
PUBLISHED_VQVAE_PARAMS = {"vqvae_large": 33.9e6, "vqvae_big": 8.0e6, "vqvae": 4.2e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED_VQVAE_PARAMS))
def test_octgpt_vqvae_parameter_counts_within_two_percent(name):
    from octformer.models.octgpt_vqvae import OctGPTVQVAE

    with torch.device("meta"):
        vq = OctGPTVQVAE.from_config(name, depth=8, depth_stop=6, code_bits=32)
    count = sum(p.numel() for p in vq.parameters())
    assert abs(count - PUBLISHED_VQVAE_PARAMS[name]) / PUBLISHED_VQVAE_PARAMS[name] < 0.02, count


def test_octgpt_shapenet_uses_the_published_vqvae():
    with torch.device("meta"):
        model = create_model("octgpt_shapenet")
    count = sum(p.numel() for p in model.vqvae.parameters())
    assert count == 33_802_418  # 33.9M published (-0.29 %)
    assert abs(count - 33.9e6) / 33.9e6 < 0.02


@pytest.mark.parametrize("name", ["volt_s", "volt_b", "volt_tiny"])
def test_volt_parameter_count_matches_closed_form(name):
    from octformer.models.volt import volt_param_formula

    with torch.device("meta"):
        model = create_model(name)
    c = model.config
    want = volt_param_formula(c["dim"], c["layers"], c["heads"], c["in_channels"], c["num_classes"],
                              c["patch_size"], c["decoder_dim"], c["mlp_ratio"])
    assert model.num_params() == want


def test_truncated_smooth_ap_approaches_exact_average_precision():
    from octformer.models.hotformerloc import truncated_smooth_ap

    rng = np.random.default_rng(8)
    b = 12
    emb = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(b, 16))), dim=1)
    label = rng.integers(0, 3, b)
    pos = torch.from_numpy(label[:, None] == label[None, :])
    neg = ~pos
    sim = (emb @ emb.t()).numpy()
    aps = []
    for i in range(b):
        p = [j for j in range(b) if j != i and label[j] == label[i]]
        if not p:
            continue
        cand = [j for j in range(b) if j != i]
        top = sorted(p, key=lambda j: -sim[i, j])[:4]
        aps.append(np.mean([
            sum(sim[i, j] >= sim[i, q] for j in p) / sum(sim[i, j] >= sim[i, q] for j in cand) for q in top
        ]))
    exact = 1 - np.mean(aps)
    got = truncated_smooth_ap(emb, pos, neg, tau=1e-6, k_pos=4)
    assert abs(float(got) - exact) < 1e-6
    # a smooth temperature gives a differentiable loss that falls when positives move closer
    e = emb.clone().requires_grad_(True)
    loss = truncated_smooth_ap(e, pos, neg, tau=0.1)
    loss.backward()
    with torch.no_grad():
        stepped = torch.nn.functional.normalize(e - 0.5 * e.grad, dim=1)
    assert float(truncated_smooth_ap(stepped, pos, neg, tau=0.1)) < float(loss)


def test_octgpt_sequence_is_a_prefix_of_the_octf_split_flags(clouds):
    from octformer import format as octf

    model = _model("octgpt_tiny")
    tree = model.build_input(list(clouds))
    seq = model.sequence(tree)
    flags = octf.split_flags(tree)
    for b in range(2):
        mine = seq["value"][(seq["batch"] == b) & (seq["value"] >= 0)]
        assert np.array_equal(mine, flags[b][: mine.size].astype(np.int64))
        # then one code token per non-empty depth_stop node of that sample
        codes = int(np.sum((seq["batch"] == b) & (seq["value"] < 0)))
        assert codes == int(tree.batch_nnum_nempty[model.depth_stop][b])
        assert mine.size == int(tree.batch_nnum[model.full_depth : model.depth_stop + 1, b].sum())
