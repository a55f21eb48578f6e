"""The training loop behind ``octformer train``: single process or torchrun/DDP, exact resume.

Design points:

* Data order comes from :class:`octformer.data.GlobalBatchSampler` (a permutation per
  epoch from the seed) and augmentation from rng(seed, epoch, index), so any world size
  sees the same global batches and a resumed run continues with the very next one.
* The loss is the sum over the global batch divided by the global number of labelled
  points (all-reduced), times the world size to undo DDP's gradient averaging: one
  process and N processes optimise the same objective.
* Checkpoints hold model, optimizer, scheduler, grad scaler, EMA, step and every rank's
  RNG states; they are written to a temporary file, fsynced, then ``os.replace``d.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from octformer.errors import OctformerError

__all__ = ["Trainer", "train", "atomic_save", "latest_checkpoint", "CHECKPOINT_PATTERN"]

CHECKPOINT_PATTERN = re.compile(r"^ckpt_step(\d{8})\.pt$")


# ------------------------------------------------------------------ checkpoint files


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path`` (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``ckpt_stepNNNNNNNN.pt`` with the highest step in ``folder`` (temp files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)))
    return found[-1][1] if found else None


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------ EMA and schedules


class EMA:
    """Exponential moving average of parameters and buffers (decay per optimizer step)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def _scheduler(opt: torch.optim.Optimizer, cfg: dict, total_steps: int):
    kind = cfg.get("schedule", "cosine")
    warmup = int(cfg.get("warmup_steps", 0))
    min_ratio = float(cfg.get("min_lr_ratio", 0.0))
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(total_steps, 2), pct_start=float(cfg.get("pct_start", 0.3)))
    if kind == "cosine":
        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = (step - warmup) / max(total_steps - warmup, 1)
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    elif kind == "constant":
        def factor(step: int) -> float:
            return (step + 1) / warmup if step < warmup else 1.0
    else:
        raise OctformerError(f"train.schedule: expected 'cosine', 'onecycle' or 'constant', got {kind!r}")
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ------------------------------------------------------------------ the trainer


class Trainer:
    """Runs one config: builds data/model/optimizer, trains, checkpoints, evaluates."""

    def __init__(self, cfg: dict, *, out_dir: str | os.PathLike, data_root: str | None = None, resume: bool = False, quiet: bool = False):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.data_root = data_root
        self.resume = resume
        self.quiet = quiet
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        t = cfg.setdefault("train", {})
        self.device = torch.device(t.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        threads = t.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.log_lines: list[str] = []

    # -- helpers
    def log(self, text: str) -> None:
        """Print on rank 0 only (and keep the line for the run log)."""
        if self.rank == 0:
            self.log_lines.append(text)
            if not self.quiet:
                print(text, flush=True)

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            t = t.to(self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
        return t

    def _to_device(self, batch: dict) -> dict:
        if self.device.type == "cpu":
            return batch
        out = {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if "octree" in out:
            out["octree"] = out["octree"].to_torch(self.device)
        return out

    # -- main entry
    def run(self) -> dict:
        cfg, t = self.cfg, self.cfg["train"]
        seed = int(cfg.get("seed", 0))
        torch.manual_seed(seed + self.rank)
        np.random.seed(seed + self.rank)
        random.seed(seed + self.rank)
        from octformer.data import GlobalBatchSampler
        from octformer.train.tasks import make_task

        task = make_task(cfg, self.data_root)
        train_set = task.train_set
        batch_size = int(t.get("batch_size", 4))
        accumulate = int(t.get("accumulate", 1))
        if accumulate < 1:
            raise OctformerError(f"train.accumulate: expected >= 1, got {accumulate}")
        steps_per_epoch = len(train_set) // batch_size // accumulate
        if steps_per_epoch < 1:
            raise OctformerError(f"train.batch_size * train.accumulate: expected at most the training set size {len(train_set)}, got {batch_size * accumulate}")
        total_steps = int(t["max_steps"]) if t.get("max_steps") else int(steps_per_epoch * float(t.get("epochs", 1)))
        d = cfg["data"]

        model, model_desc = task.build_model()
        collate = task.collate(model)
        if self.world > 1 and t.get("sync_batchnorm", True):  # BN statistics over the global batch
            if self.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                from octformer.train.syncbn import convert_global_batchnorm

                model = convert_global_batchnorm(model)
        model.to(self.device)
        lr = float(t.get("lr", 1e-3))
        opt_name = t.get("optimizer", "adamw")
        if opt_name == "adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(t.get("weight_decay", 0.01)))
        elif opt_name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=float(t.get("momentum", 0.9)), weight_decay=float(t.get("weight_decay", 1e-4)))
        else:
            raise OctformerError(f"train.optimizer: expected 'adamw' or 'sgd', got {opt_name!r}")
        sched = _scheduler(opt, t, total_steps)
        use_amp = self.device.type == "cuda" and t.get("amp", "auto") in ("auto", True, "fp16", "bf16")
        amp_dtype = torch.bfloat16 if t.get("amp") == "bf16" else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        ema = EMA(model, float(t["ema"])) if t.get("ema") else None

        step = 0
        ckpt_dir = self.out_dir / "checkpoints"
        if self.rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            path = latest_checkpoint(ckpt_dir)
            if path is None:
                raise OctformerError(f"--resume: expected a checkpoint ckpt_stepNNNNNNNN.pt in {str(ckpt_dir)!r}, found none")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state["world_size"] != self.world:
                raise OctformerError(f"--resume: the checkpoint was written by {state['world_size']} processes, this run has {self.world}")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            step = int(state["step"])
            _set_rng_state(state["rng"][self.rank])
            self.log(f"resumed from {path} at step {step}")
        if self.world > 1:
            ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            ddp_model = model

        sampler = GlobalBatchSampler(len(train_set), batch_size, rank=self.rank, world_size=self.world, seed=seed, start_step=step * accumulate, max_steps=total_steps * accumulate)
        workers = int(d.get("num_workers", 0))
        # its own generator: creating the iterator must not draw from the global RNG, whose state a resume restores
        loader_rng = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, num_workers=workers, persistent_workers=False, generator=loader_rng)

        writer = None
        if self.rank == 0 and t.get("tensorboard", True):
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                self.log("TensorBoard: not installed (pip install tensorboard); logging to the console only")
        self.log(f"model: {model_desc}, {sum(p.numel() for p in model.parameters()):,} parameters")
        self.log(f"data: {task.describe}; global batch {batch_size} x {accumulate} accumulation, {self.world} process(es) on {self.device.type}")
        self.log(f"schedule: {total_steps} steps ({steps_per_epoch} per epoch), {t.get('schedule', 'cosine')} lr {lr:g}" + (f", EMA {ema.decay}" if ema else "") + (", AMP" if use_amp else ""))

        loss_log = self.out_dir / "loss.jsonl"
        if self.rank == 0:
            if not self.resume and loss_log.exists():
                loss_log.unlink()
        ckpt_every = int(t.get("checkpoint_every", 0))
        log_every = max(int(t.get("log_every", 10)), 1)
        clip = t.get("clip_grad")
        model.train()
        start_time = time.perf_counter()
        start_step = step
        opt.zero_grad(set_to_none=True)
        pending: list[dict] = []
        for batch in loader:
            pending.append(self._to_device(batch))
            if len(pending) < accumulate:
                continue
            # normalise by the labelled points of the whole accumulation window on all ranks,
            # so accumulation and world size do not change the objective
            counts = [task.count(b) for b in pending]
            total = self._all_reduce(torch.stack(counts).sum().to(torch.float64).reshape(1)).item()
            window_loss = torch.zeros(1, dtype=torch.float64)
            for micro, b in enumerate(pending):
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                    loss_sum = task.loss_sum(ddp_model, b)
                loss = loss_sum * (self.world / max(total, 1.0))
                if self.world > 1 and micro + 1 < accumulate:
                    with ddp_model.no_sync():
                        scaler.scale(loss).backward()
                else:
                    scaler.scale(loss).backward()
                window_loss += loss_sum.detach().to(torch.float64).cpu()
            pending = []
            running = float(self._all_reduce(window_loss).item() / max(total, 1.0))
            if clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            if self.rank == 0:
                with open(loss_log, "a") as fh:
                    fh.write(json.dumps({"step": step, "loss": running, "lr": sched.get_last_lr()[0]}) + "\n")
                if writer is not None:
                    writer.add_scalar("train/loss", running, step)
                    writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
            if step % log_every == 0 or step == total_steps:
                rate = (step - start_step) / max(time.perf_counter() - start_time, 1e-9)
                eta = (total_steps - step) / max(rate, 1e-9)
                bar = "#" * int(20 * step / total_steps)
                self.log(f"[{bar:<20}] step {step}/{total_steps}  epoch {step / steps_per_epoch:.2f}  loss {running:.4f}  lr {sched.get_last_lr()[0]:.2e}  {rate:.1f} step/s  eta {eta:.0f}s")
            if ckpt_every and step % ckpt_every == 0 and step < total_steps:
                self._checkpoint(step, model, opt, sched, scaler, ema, ckpt_dir)
        if step >= total_steps:
            self._checkpoint(step, model, opt, sched, scaler, ema, ckpt_dir)

        # evaluation (EMA weights when enabled)
        eval_model = model
        if ema is not None:
            import copy

            eval_model = copy.deepcopy(model)
            eval_model.load_state_dict(ema.shadow)
        eval_model.eval()
        scores, lines = task.evaluate(eval_model, self, collate, batch_size, lambda: torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp))
        if ema is not None:
            lines[0] += " [EMA weights]"
        for line in lines:
            self.log(line)
        result = {"step": step, **scores, "model": model_desc, "seconds": time.perf_counter() - start_time}
        if self.rank == 0:
            final = {"model": model.state_dict(), "ema": ema.state_dict()["shadow"] if ema else None, "config": self.cfg, "step": step, "scores": scores}
            atomic_save(final, self.out_dir / "final.pt")
            (self.out_dir / "result.json").write_text(json.dumps(result, indent=2))
            if writer is not None:
                for k, v in scores.items():
                    if isinstance(v, float):
                        writer.add_scalar(f"val/{k}", v, step)
                writer.close()
        if self.world > 1:
            dist.barrier()
        return result

    def _checkpoint(self, step, model, opt, sched, scaler, ema, ckpt_dir: Path) -> None:
        rng = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        if self.rank == 0:
            state = {
                "step": step,
                "world_size": self.world,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": rng,
                "config": self.cfg,
            }
            atomic_save(state, ckpt_dir / f"ckpt_step{step:08d}.pt")
            keep = int(self.cfg["train"].get("keep_checkpoints", 3))
            found = sorted(p for p in ckpt_dir.iterdir() if CHECKPOINT_PATTERN.match(p.name))
            for old in found[:-keep] if keep > 0 else []:
                old.unlink()
        if self.world > 1:
            dist.barrier()


def train(config: str | dict | None = None, overrides: tuple[str, ...] = (), *, out_dir: str | os.PathLike | None = None, data_root: str | None = None, resume: bool = False, quiet: bool = False) -> dict:
    """Train a shipped config name, YAML path or dict; returns the validation scores (rank 0's view)."""
    from octformer.train.config import apply_overrides, load_config

    cfg = apply_overrides(config, overrides) if isinstance(config, dict) else load_config(config, overrides)
    out = Path(out_dir or cfg.get("output") or f"runs/{cfg.get('name', 'run')}")
    trainer = Trainer(cfg, out_dir=out, data_root=data_root, resume=resume, quiet=quiet)
    try:
        return trainer.run()
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m octformer.train`` (same arguments as ``octformer train``)."""
    from octformer.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
