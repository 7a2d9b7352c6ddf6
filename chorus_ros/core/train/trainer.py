"""One trainer for every training stage (``config.stage``, :mod:`.stages`).

One step = (per process) ``scenes_per_step`` scenes drawn at random from this process's share
of the training scenes; the stage turns each into a :class:`~.stages.StageLoss` (for the
default stage ``align``: augmented (:mod:`.augment`), encoded, scored per head
(:func:`.losses.head_loss`)); the trainer back-propagates it with multi-task gradient
calibration at the shared tensor the stage names (:func:`.losses.calibrate_gradients`; level
two, per encoder input branch, when ``calibration.branches`` and the model has branches), then
takes one AdamW step under a warm-up + cosine schedule. The trainer never branches on the
stage's name. Logs go to ``<log.dir>/train_log.csv`` (and TensorBoard when installed);
checkpoints to ``checkpoint.dir`` (weights + config via
:func:`chorus_ros.core.encoder.checkpoint.save_checkpoint`, the text encoder's weights and the
label set beside them); the resumable optimiser/scheduler/step/RNG state to
``<log.dir>/trainer_state.pt``.

Launched by ``torchrun`` (``WORLD_SIZE > 1``), every process joins the default process group
(gloo on the CPU, NCCL on GPUs), takes the scenes ``rank::world_size``, and the model is
wrapped in :class:`torch.nn.parallel.DistributedDataParallel`; rank 0 alone logs and writes.
"""
from __future__ import annotations

import csv
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from chorus_ros.core.errors import CheckpointError, InvalidInputError
from chorus_ros.core.lift import (FOLDER_SCENE_PREFIX, LiftConfig, LiftedScene, lift_folder_scene,
                                  lift_synthetic_scenes)
from chorus_ros.core.train.config import TrainConfig
from chorus_ros.core.train.losses import calibrate_gradients
from chorus_ros.core.train.stages import Stage, StageLoss, build_stage

__all__ = ["Trainer", "TrainResult", "DistInfo", "init_distributed", "lr_factor", "STATE_FILE", "LOG_FILE"]

STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.csv"
TEXT_WEIGHTS = "text_encoder.safetensors"
LABELS_FILE = "labels.yaml"


@dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local)


def shutdown_distributed() -> None:
    """Leave the process group :func:`init_distributed` joined (no-op outside torchrun).

    Every rank waits at a barrier first, so none tears its gloo connections down while another
    still uses them: one two-process test run aborted at exit ("terminate called without an
    active exception") after both ranks had finished, which that race would explain (seen once,
    not reproduced on demand).
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    step: int
    """Steps completed (including resumed ones)."""
    seconds: float
    """Wall time of this call."""
    metrics: dict = field(default_factory=dict)
    """Metrics of the last step."""
    checkpoint_dir: str = ""


class Trainer:
    """Trains a :class:`~chorus_ros.core.encoder.model.ChorusEncoder` with the stage ``config.stage``.

    Args:
        config: the training config.
        scenes: optional pre-built scenes (the stage's kind: :class:`LiftedScene` for ``align``);
            None lets the stage load them (``align`` lifts ``config.data``, cached).
        model: optional model (tests); None lets the stage build it (by default a ChorusEncoder
            from ``config.encoder`` with one head per trained teacher kind, dimension = the
            teacher's).
        stage: optional stage instance (tests); None builds ``config.stage`` from the registry.
    """

    def __init__(self, config: TrainConfig, *, scenes: list | None = None,
                 model: nn.Module | None = None, stage: Stage | None = None) -> None:
        self.cfg = config
        self._init_from_training: dict | None = None   # training record of the init_from checkpoint
        self.stage = stage if stage is not None else build_stage(config.stage, config.stage_options)
        self.dist = init_distributed(config.device)
        dev = config.device
        if dev.startswith("cuda") and self.dist.distributed:
            dev = f"cuda:{self.dist.local_rank}"
        self.device = torch.device(dev)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self._text_encoder = None
        self._label_set = None
        self.teacher_specs = [dict(t) for t in config.teachers]
        self.gen = torch.Generator().manual_seed(config.seed * 1000 + self.dist.rank)
        self.scenes = scenes if scenes is not None else self.stage.load_scenes(self)
        if not self.scenes:
            raise InvalidInputError("training needs at least one scene")
        # generated rooms and scene folders, for data.folders_weight (_draw_scene)
        self._scene_kinds = ([s for s in self.scenes if not s.scene_id.startswith(FOLDER_SCENE_PREFIX)],
                             [s for s in self.scenes if s.scene_id.startswith(FOLDER_SCENE_PREFIX)])
        self.heads = self.stage.resolve_heads(self)
        self.stage.prepare(self)
        self.model = (model if model is not None else self.stage.build_model(self)).to(self.device)
        if config.init_from:
            self.init_from_checkpoint(config.init_from)
        self.ddp_model = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DDP(self.model, device_ids=ids)
        self.stage.setup(self)
        self.stage.modules.to(self.device)
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        params += [(n, p) for n, p in self.stage.modules.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.ndim > 1]
        no_decay = [p for n, p in params if p.ndim <= 1]
        o = config.optim
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=o.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, o.steps, o.warmup_steps, o.min_lr_ratio))
        self.step = 0
        self.run_dir = Path(config.log.dir)
        self.ckpt_dir = Path(config.checkpoint.dir)
        self._tb = None
        if config.checkpoint.resume:
            self._maybe_resume()
        log = self.run_dir / LOG_FILE
        if self.dist.main and log.is_file():
            if self.step == 0:  # a fresh start: keep, do not append to, an old log
                log.rename(log.with_suffix(f".{int(time.time())}.csv"))
            else:  # resumed: drop rows logged after the saved state (an interrupted run's tail)
                lines = log.read_text().splitlines()
                keep = lines[:1] + [r for r in lines[1:] if r.split(",", 1)[0].isdigit() and int(r.split(",", 1)[0]) <= self.step]
                if len(keep) != len(lines):
                    log.write_text("\n".join(keep) + "\n")

    # ------------------------------------------------------------------ building
    @property
    def text_encoder(self):
        """The configured text encoder (built on first use)."""
        if self._text_encoder is None:
            from chorus_ros.core.text import build_text_encoder
            self._text_encoder = build_text_encoder(self.cfg.text_encoder)
        return self._text_encoder

    @property
    def label_set(self):
        if self._label_set is None:
            from chorus_ros.core.labels import LabelSet
            self._label_set = LabelSet.from_yaml(self.cfg.label_set)
        return self._label_set

    def build_teachers(self) -> list:
        from chorus_ros.core.teachers import build_teacher
        return [build_teacher(s, text_encoder=self.text_encoder if s.get("type") == "oracle_language" else None)
                for s in self.teacher_specs]

    def lift_scenes(self) -> list[LiftedScene]:
        """``config.data``'s synthetic scenes with lifted teacher targets (this process's share)."""
        d = self.cfg.data
        if d.source != "synthetic":
            raise InvalidInputError(f"data.source {d.source!r} unknown; known: ['synthetic']")
        if not self.teacher_specs:
            raise InvalidInputError("training config lists no teachers")
        seeds = list(d.train_seeds)
        if self.dist.distributed and len(seeds) >= self.dist.world_size:
            seeds = seeds[self.dist.rank::self.dist.world_size]
        teachers = self.build_teachers()
        lc = LiftConfig(eps=d.lift_eps, cache_dir=d.cache_dir or None, backend=d.render_backend)
        scenes = lift_synthetic_scenes(seeds, teachers, scene=d.scene, views=d.views, config=lc,
                                       progress=self.cfg.log.progress and self.dist.main,
                                       density_range=d.density_range or None,
                                       photometric_fraction=d.photometric_fraction,
                                       photometric_fit=d.photometric_fit or None,
                                       mesh_fraction=d.mesh_fraction) if seeds else []
        if not 0.0 <= d.folders_weight < 1.0 or (d.folders_weight > 0 and not (seeds and d.folders)):
            raise InvalidInputError(f"data.folders_weight must be in [0, 1) and needs both folders and train_seeds, "
                                    f"got {d.folders_weight}")
        folders = list(d.folders)
        if self.dist.distributed and len(folders) >= self.dist.world_size:
            folders = folders[self.dist.rank::self.dist.world_size]
        for i, root in enumerate(folders):
            if not Path(root).is_dir():
                raise InvalidInputError(f"data.folders: {root} is not a folder")
            sc = lift_folder_scene(root, teachers, self.label_set, labels_map=d.folders_labels_map or None,
                                   views=d.folders_views or None, config=lc, seed=100_000 + i)
            scenes.append(sc)
        return scenes

    def default_heads(self) -> list[str]:
        """``config.heads`` (or every teacher kind) checked against the scenes' lifted targets."""
        avail = list(self.scenes[0].targets.features)
        kinds = [s.get("kind") for s in self.teacher_specs]
        avail = [k for k in kinds if k in avail] + [k for k in avail if k not in kinds]  # teachers' order
        want = list(self.cfg.heads) if self.cfg.heads else avail
        missing = [h for h in want if h not in avail]
        if missing:
            raise InvalidInputError(f"heads {missing} have no lifted targets; teachers give {avail}")
        return want

    def build_encoder(self, head_dims: dict[str, int] | None = None) -> nn.Module:
        """A ChorusEncoder from ``config.encoder`` with one head per trained head; head dims from
        ``head_dims`` or the first scene's lifted targets (with no heads at all, the encoder
        config's own heads are kept)."""
        from chorus_ros.core.encoder.config import EncoderConfig, HeadSpec
        from chorus_ros.core.encoder.model import ChorusEncoder
        enc = dict(self.cfg.encoder)
        if head_dims is None and self.heads:
            head_dims = {k: int(v.shape[1]) for k, v in self.scenes[0].targets.features.items()}
        if self.heads:
            enc["heads"] = [HeadSpec(h, head_dims[h]) for h in self.heads]
        return ChorusEncoder(EncoderConfig.from_dict(enc))

    def init_from_checkpoint(self, path: str) -> None:
        """Initialise the model from a checkpoint directory (e.g. a ``contrastive`` run): every
        backbone tensor must exist with the same shape (else :class:`CheckpointError` listing
        them); heads are copied where name and shape match and kept fresh otherwise."""
        from chorus_ros.core.encoder.checkpoint import load_checkpoint
        loaded = load_checkpoint(str(path))
        # same tensor shapes do not make the same inputs: the input variant, feature version and
        # voxel size change what every input channel means, so they must match
        mine = self.model.config
        differ = [f"{k}: checkpoint {getattr(loaded.config, k)!r}, config {getattr(mine, k)!r}"
                  for k in ("variant", "feature_version", "voxel_size") if getattr(loaded.config, k) != getattr(mine, k)]
        if differ:
            raise CheckpointError(f"init_from {path}: the encoder inputs differ ({'; '.join(differ)}); "
                                  f"set encoder.{differ[0].split(':')[0]} to the checkpoint's value")
        theirs = loaded.model.state_dict()
        own = self.model.state_dict()
        bad = [k for k in own if not k.startswith("heads.") and (k not in theirs or theirs[k].shape != own[k].shape)]
        if bad:
            raise CheckpointError(f"init_from {path}: backbone tensors missing or of another shape: {bad[:8]}"
                                  f"{' ...' if len(bad) > 8 else ''}")
        take = {k: v for k, v in theirs.items() if k in own and v.shape == own[k].shape}
        own.update(take)
        self.model.load_state_dict(own)
        self._init_from_training = (loaded.meta or {}).get("training")

    # ------------------------------------------------------------------ one step
    def _backward(self, out: StageLoss, k: int, metrics: dict) -> float:
        """Back-propagate one scene's :class:`StageLoss` (divided by ``k``); returns its total loss."""
        tasks = out.tasks
        total = sum(tasks.values()) if tasks else None
        branch = getattr(self.model, "branch_calibration", None)
        if tasks and out.shared is not None:
            if out.shared_leaf is None:
                raise InvalidInputError(f"stage {self.cfg.stage!r} gave 'shared' without 'shared_leaf'")
            grads = {h: torch.autograd.grad(l, out.shared_leaf, retain_graph=True, allow_unused=True)[0]
                     for h, l in tasks.items()}
            grads = {h: (g if g is not None else torch.zeros_like(out.shared_leaf)) for h, g in grads.items()}
            G, stats = calibrate_gradients(grads, self.cfg.calibration, self.gen)
            for h in tasks:
                metrics[f"gnorm_{h}"] = metrics.get(f"gnorm_{h}", 0.0) + stats.norms[h] / k
            metrics["conflicts"] = metrics.get("conflicts", 0) + stats.conflicts
            metrics["min_grad_cos"] = min(metrics.get("min_grad_cos", 1.0), stats.min_cosine)
            # heads get their own losses' gradients (through the leaf), the backbone gets G at
            # the shared tensor -- through the level-two branch calibration when it is on
            cal = (total + (out.shared * G.detach()).sum()) / k
            level2 = branch is not None and self.cfg.calibration.enabled and self.cfg.calibration.branches
            if out.extra is None or self.dist.distributed:  # DDP allows one backward per forward
                with (branch.active() if level2 else nullcontext()):
                    (cal + out.extra / k if out.extra is not None else cal).backward()
            else:
                with (branch.active() if level2 else nullcontext()):
                    cal.backward(retain_graph=True)
                (out.extra / k).backward()
            if level2 and branch.last_norms:
                for name, v in branch.last_norms.items():
                    metrics[f"branch_gnorm_{name}"] = metrics.get(f"branch_gnorm_{name}", 0.0) + v / k
        else:
            parts = ([total] if total is not None else []) + ([out.extra] if out.extra is not None else [])
            if not parts:
                raise InvalidInputError(f"stage {self.cfg.stage!r} returned no loss")
            (sum(parts) / k).backward()
        value = float(total.detach()) if total is not None else 0.0
        if out.extra is not None:
            value += float(out.extra.detach())
        for h, l in tasks.items():
            metrics[f"loss_{h}"] = metrics.get(f"loss_{h}", 0.0) + float(l.detach()) / k
        return value

    def _draw_scene(self) -> LiftedScene:
        """One training scene: uniformly, or with ``data.folders_weight`` > 0 a folder with that
        probability and a synthetic room otherwise (each uniformly within its kind)."""
        w = self.cfg.data.folders_weight
        if w > 0:
            kinds = self._scene_kinds
            if kinds[0] and kinds[1]:
                pool = kinds[int(float(torch.rand((), generator=self.gen)) < w)]
                return pool[int(torch.randint(len(pool), (1,), generator=self.gen))]
        return self.scenes[int(torch.randint(len(self.scenes), (1,), generator=self.gen))]

    def train_step(self) -> dict:
        """One optimisation step; returns its metrics."""
        self.model.train()
        self.stage.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        k = max(1, self.cfg.optim.scenes_per_step)
        metrics: dict = {}
        for i in range(k):
            scene = self._draw_scene()
            sync = nullcontext()
            if self.dist.distributed and i < k - 1:
                sync = self.ddp_model.no_sync()
            with sync:
                out = self.stage.scene_loss(self, scene)
                value = self._backward(out, k, metrics)
            metrics["loss"] = metrics.get("loss", 0.0) + value / k
            for name, v in out.metrics.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    metrics[name] = metrics.get(name, 0) + v  # counts add up
                else:
                    metrics[name] = metrics.get(name, 0.0) + float(v) / k
        if self.cfg.optim.grad_clip > 0:
            params = list(self.model.parameters()) + list(self.stage.modules.parameters())
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return metrics

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        """Train until ``optim.steps``; log, checkpoint, return the last metrics."""
        t0 = time.perf_counter()
        total = self.cfg.optim.steps
        metrics: dict = {}
        bar = None
        if self.cfg.log.progress and self.dist.main:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=self.step, desc="train", unit="step")
        every = max(1, self.cfg.checkpoint.every)
        while self.step < total:
            ts = time.perf_counter()
            metrics = self.train_step()
            metrics["step_seconds"] = time.perf_counter() - ts
            if self.dist.main and (self.step % max(1, self.cfg.log.every) == 0 or self.step == total or self.step == 1):
                self._log(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if self.step % every == 0 or self.step == total:
                self.save()
        if bar is not None:
            bar.close()
        if self._tb is not None:
            self._tb.flush()
        if self.step >= total and not (self.ckpt_dir / "model.safetensors").is_file():
            self.save()  # resumed at the end, or zero steps: still leave a checkpoint
        return TrainResult(self.step, time.perf_counter() - t0, metrics, str(self.ckpt_dir))

    # ------------------------------------------------------------------ logs
    def _log(self, metrics: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOG_FILE
        row = {"step": self.step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        new = not path.is_file()
        if not new:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != list(row):
                new = True
                path.rename(path.with_suffix(f".{int(time.time())}.csv"))  # columns changed: keep the old log
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.cfg.log.tensorboard:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.run_dir / "tb"))
                except Exception:  # tensorboard not installed: CSV only
                    self.cfg.log.tensorboard = False
            if self._tb is not None:
                for k, v in metrics.items():
                    self._tb.add_scalar(k, float(v), self.step)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> dict:
        """Metadata stored in the checkpoint's config.yaml (label set, teachers, text encoder, training)."""
        te = dict(self.cfg.text_encoder)
        te["weights"] = TEXT_WEIGHTS
        trained = [s for s in self.teacher_specs if s.get("kind") in self.heads]
        return {
            "label_set": self.label_set.to_dict(),
            "teachers": trained,
            "text_encoder": te,
            "training": {"stage": self.cfg.stage, **self.stage.checkpoint_meta(self),
                         "step": self.step, "steps": self.cfg.optim.steps, "seed": self.cfg.seed,
                         "train_seeds": list(self.cfg.data.train_seeds), "heads": list(self.heads),
                         "train_folders": [Path(f).name for f in self.cfg.data.folders],
                         "calibration": bool(self.cfg.calibration.enabled), "world_size": self.dist.world_size,
                         "config": self.cfg.to_dict(),
                         # provenance: the training record of the checkpoint this run started from
                         # (itself holding its own parent's), so a staged recipe is recorded whole
                         **({"init_from_training": self._init_from_training}
                            if self._init_from_training else {})},
        }

    def save(self) -> None:
        """Write the checkpoint (rank 0) and the resumable trainer state."""
        if self.dist.main:
            from chorus_ros.core.encoder.checkpoint import save_checkpoint
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(str(self.ckpt_dir), self.model, self.checkpoint_meta())
            self.text_encoder.save_weights(self.ckpt_dir / TEXT_WEIGHTS)
            self.label_set.to_yaml(self.ckpt_dir / LABELS_FILE)
            self._save_codebook()
            self.stage.save(self, self.ckpt_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "torch_rng": torch.random.get_rng_state(),
                     "gen": self.gen.get_state(), "checkpoint_dir": str(self.ckpt_dir.resolve()),
                     "stage_modules": self.stage.modules.state_dict()}
            tmp = self.run_dir / (STATE_FILE + ".tmp")
            torch.save(state, tmp)
            tmp.replace(self.run_dir / STATE_FILE)
        if self.dist.distributed:
            import torch.distributed as dist
            dist.barrier()

    def _save_codebook(self) -> None:
        """With the object head taught by a ``gocl`` teacher, copy that GOCL model (its
        scene-agnostic codebook) into ``<checkpoint>/gocl`` so the pipeline gives objects code ids."""
        import shutil

        from chorus_ros.core.objects.teacher import gocl_dir
        specs = [t for t in self.teacher_specs if t.get("type") == "gocl" and t.get("kind") == "object"]
        if not specs or "object" not in self.heads:
            return
        src = gocl_dir((specs[0].get("options") or {}).get("checkpoint") or "")
        dst = self.ckpt_dir / "gocl"
        if dst.resolve() == src.resolve():
            return
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)

    def _maybe_resume(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            return
        from chorus_ros.core.encoder.checkpoint import load_checkpoint
        state = torch.load(path, map_location="cpu", weights_only=True)
        loaded = load_checkpoint(str(self.ckpt_dir))
        step_ckpt = int((loaded.meta.get("training") or {}).get("step", -1))
        if step_ckpt != int(state["step"]):
            raise CheckpointError(f"cannot resume: {path} is at step {state['step']} but the checkpoint in "
                                  f"{self.ckpt_dir} is at step {step_ckpt}; delete one of them")
        own = self.model.state_dict()
        theirs = loaded.model.state_dict()
        if set(own) != set(theirs) or any(own[k].shape != theirs[k].shape for k in own):
            raise CheckpointError(f"cannot resume from {self.ckpt_dir}: its architecture differs from the config's")
        self.model.load_state_dict(theirs)
        if "stage_modules" in state:
            self.stage.modules.load_state_dict(state["stage_modules"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.random.set_rng_state(state["torch_rng"])
        self.gen.set_state(state["gen"])
        self.step = int(state["step"])
