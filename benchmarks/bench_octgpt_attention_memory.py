"""OctGPT level-causal attention, old vs new: peak RSS rise and time of one octgpt_small training step with
``layers`` blocks and no checkpointing, the old dense (windows, 1, K, K) pair-mask SDPA path patched in for "dense".

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_octgpt_attention_memory.py {new,dense} 2`` (one fresh process per case).
"""
import sys, json, time, numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import common
from octformer.io import read_points
from octformer.models import create_model
import octformer.nn.attention as A

def old_dense(q, k, v, slot_levels, group_size, key_mask=None, backend="auto"):
    m, h, dh = q.shape; kk = group_size; g = m // kk
    lv = slot_levels.view(g, kk)
    pair = torch.where(lv[:, None, :] > lv[:, :, None], float("-inf"), 0.0).to(q.dtype)
    if key_mask is not None:
        pair = pair + key_mask.view(g, 1, kk)
    dead = torch.isinf(pair).all(-1, keepdim=True)
    pair = pair.masked_fill(dead, 0.0)
    grp = lambda t: t.view(g, kk, h, dh).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(grp(q), grp(k), grp(v), attn_mask=pair[:, None])
    return out.transpose(1, 2).reshape(m, h, dh)

impl, layers = sys.argv[1], int(sys.argv[2])
if impl == "dense":
    A.level_causal_window_attention = old_dense
pts = read_points(str(common.SHARED_DATA / "stanford_bunny" / "reconstruction" / "bun_zipper.ply")).points.astype(np.float64)
torch.manual_seed(0)
model = create_model("octgpt_small", layers=layers, checkpoint=False).train()
tree = model.build_input([pts]); g = torch.Generator().manual_seed(0)
step = lambda: model.loss(tree, g)["loss"].backward()
mem = common.memory_probe(step)
t0 = time.perf_counter(); step(); dt = time.perf_counter() - t0
print(json.dumps({"impl": impl, "layers": layers, "dpeak_mib": round(mem["dpeak_mib"]), "step_s": round(dt, 2)}))
