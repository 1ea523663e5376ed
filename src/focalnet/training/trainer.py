"""The training engine behind `focalnet train` and `focalnet pretrain`: one loop for every task
(`focalnet.training.task`), one process or many under `torchrun`, resumable.

A run writes into `output_dir`:
* `checkpoint-last.pt` - everything needed to continue (model, optimiser, scheduler, grad
  scaler, EMA, position in the epoch, every process's RNG), replaced atomically;
* `metrics.jsonl` - one line per finished epoch; `curves.png`; TensorBoard logs when installed;
* `model/` - the final model as the task saves it (for FocalNet tasks: HF layout with the
  evaluation preprocessing, which `focalnet predict`/`evaluate` and `transformers` read);
* whatever else the task writes after each epoch (masked image modeling: `reconstructions/`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_path, atomic_write
from . import distributed
from .config import TrainConfig
from .data import evaluation_loader, training_loader
from .evaluation import autocast
from .optim import build_ema, build_optimizer, warmup_cosine, warmup_poly, warmup_steps_decay
from .task import Task, batch_inputs, move_to, task_named

CHECKPOINT_NAME = "checkpoint-last.pt"
CHECKPOINT_FORMAT = "focalnet-training-checkpoint/1"


class CheckpointCorruptError(RuntimeError):
    """A resume checkpoint that cannot be read; it is left untouched."""


# ------------------------------------------------------------------------------------------------
# Progress that a checkpoint carries
@dataclass
class Progress:
    epoch: int = 0
    """The epoch in progress (0-based)."""
    batch: int = 0
    """Global batches of that epoch already trained."""
    step: int = 0
    """Optimiser steps taken in the whole run."""
    loss_sum: float = 0.0
    term_sums: dict[str, float] = field(default_factory=dict)
    """Image-weighted sums of the task's named loss terms."""
    images: float = 0.0
    skipped: float = 0.0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def start_epoch(self) -> None:
        self.loss_sum = self.images = self.skipped = self.seconds = 0.0
        self.term_sums = {}
        self.batch = 0


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint (weights-only unpickling); a damaged file raises
    `CheckpointCorruptError` naming it, and is neither changed nor removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointCorruptError(
            f"cannot resume: {path} is not a readable training checkpoint ({type(error).__name__}: {error}). "
            "The file was left as it is; resume from another checkpoint, or start over with --overwrite."
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointCorruptError(f"cannot resume: {path} is not a focalnet training checkpoint")
    return checkpoint


# ------------------------------------------------------------------------------------------------
class Trainer:
    """Builds everything from a `TrainConfig` and its task, and runs (or resumes) the epochs."""

    def __init__(
        self, config: TrainConfig, processes: distributed.Processes, task_class: type[Task] | None = None
    ) -> None:
        """`task_class` (any `Task` subclass) defaults to the built-in task that `config.task` names."""
        self.config = config
        self.processes = processes
        self.device = processes.device
        self.output_dir = Path(config.output_dir)
        self._check_batch_split()

        torch.manual_seed(config.seed + processes.rank)
        random.seed(config.seed + processes.rank)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        self.task: Task = (task_class or task_named(config.task))(config, processes)
        self.model = self.task.build_model().train().to(self.device)  # before the data: it may shape it
        pin_memory = self.device.type == "cuda"
        self.sampler, self.train_loader = training_loader(
            self.task.train_dataset(),
            config.batch_size,
            config.batch_size // (processes.world * config.accum_steps),
            processes.rank,
            processes.world,
            config.seed,
            config.workers,
            pin_memory,
            self.task.collate,
            config.shuffle_buffer,
        )
        self.val_loader = evaluation_loader(
            self.task.val_dataset(),
            config.eval_batch_size or config.batch_size,
            config.workers,
            processes.rank,
            processes.world,
            pin_memory,
            self.task.collate,
        )
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if config.max_train_batches is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, config.max_train_batches)
        lr = config.lr * config.lr_scale
        self.optimizer = build_optimizer(
            self.model, lr, config.weight_decay, config.layer_decay, config.betas, config.head_lr_scale
        )
        self.base_lr = lr
        self.lr_factor = self._schedule(lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.ema = build_ema(self.model, config.ema_decay) if config.ema_decay else None
        self.progress = Progress()
        self.network: nn.Module = self.model
        self._writer = None

    def _schedule(self, lr: float):
        """The LambdaLR factor of `config.schedule`, in optimiser steps."""
        config, steps = self.config, self.steps_per_epoch
        warmup_steps = round(config.warmup_epochs * steps)
        warmup_lr = min(config.warmup_lr * config.lr_scale, lr)
        if config.schedule == "step":
            decay_steps = [round(epoch * steps) for epoch in config.decay_epochs]
            return warmup_steps_decay(decay_steps, warmup_steps, lr, warmup_lr)
        min_lr = min(config.min_lr * config.lr_scale, lr)
        if config.schedule == "poly":
            return warmup_poly(config.epochs * steps, warmup_steps, lr, warmup_lr, min_lr, config.poly_power)
        return warmup_cosine(config.epochs * steps, warmup_steps, lr, warmup_lr, min_lr)

    @property
    def current_lr(self) -> float:
        """The scheduled learning rate (of the encoder's top layers; heads may train at `head_lr_scale` times it)."""
        return self.base_lr * self.lr_factor(self.scheduler.last_epoch)

    def _check_batch_split(self) -> None:
        config, world = self.config, self.processes.world
        if config.batch_size % (world * config.accum_steps):
            raise ValueError(
                f"batch_size {config.batch_size} must split evenly into {world} process(es) x "
                f"{config.accum_steps} accumulation step(s); change batch_size or accum_steps"
            )

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        """Every process's RNG is gathered; rank 0 writes the file atomically."""
        rng = [_rng_state()]
        if self.processes.world > 1:
            rng = [None] * self.processes.world
            torch.distributed.all_gather_object(rng, _rng_state())
        if not self.processes.is_main:
            return
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "task": self.task.name,
            "task_state": self.task.state(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "progress": vars(self.progress),
            "data_layout": self.sampler.layout,
            "rng": rng,
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: str | Path) -> None:
        checkpoint = read_checkpoint(path)
        task = checkpoint.get("task", "classification")
        if task != self.task.name:
            raise ValueError(f"{path} is a {task} run; this run's task is {self.task.name}")
        self.task.check_state(checkpoint.get("task_state", {"classes": checkpoint.get("classes")}), Path(path))
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None and checkpoint["ema"] is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.progress = Progress(**checkpoint["progress"])
        if self.progress.batch and checkpoint.get("data_layout") != self.sampler.layout:
            warnings.warn(
                f"{path} stopped mid-epoch reading the stream with {checkpoint.get('data_layout')}, this run has "
                f"{self.sampler.layout}: the rest of the epoch is drawn in this run's layout, so some samples may "
                "repeat or be left out until it ends",
                stacklevel=2,
            )
        states = checkpoint["rng"]
        if len(states) != self.processes.world:
            warnings.warn(
                f"{path} was written by {len(states)} process(es), this run has {self.processes.world}: "
                "random augmentation and drop path will not repeat exactly",
                stacklevel=2,
            )
        _set_rng_state(states[self.processes.rank % len(states)])

    # -- the run -------------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None) -> list[dict[str, Any]]:
        if resume is not None:
            self.load_checkpoint(resume)
        if self.processes.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if self.config.compile:
            self.network = torch.compile(self.network)
        self._open_tensorboard()
        while self.progress.epoch < self.config.epochs:
            self.train_epoch()
            self.finish_epoch(self.validate())
        if self.processes.is_main:
            self.save_model()
        return self.progress.history

    def train_epoch(self) -> None:
        config, progress = self.config, self.progress
        self.sampler.set_epoch(progress.epoch, progress.batch)
        self.network.train()
        remaining = (self.steps_per_epoch - progress.batch) * config.accum_steps
        started = time.perf_counter()
        bar = self._progress_bar(remaining, f"epoch {progress.epoch + 1}/{config.epochs}")
        for micro, (inputs, targets, skipped) in enumerate(self.train_loader):
            if micro >= remaining:
                break
            last_micro = (micro + 1) % config.accum_steps == 0
            loss, terms, count = self._forward_backward(inputs, targets, sync=last_micro)
            progress.loss_sum += loss * count
            for name, value in terms.items():
                progress.term_sums[name] = progress.term_sums.get(name, 0.0) + value * count
            progress.images += count
            progress.skipped += skipped
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.current_lr:.2e}")
            if not last_micro:
                continue
            self._optimizer_step()
            progress.batch += 1
            progress.step += 1
            mid_epoch = progress.batch < self.steps_per_epoch
            if config.checkpoint_every and progress.step % config.checkpoint_every == 0 and mid_epoch:
                progress.seconds += time.perf_counter() - started
                started = time.perf_counter()
                self.save_checkpoint()
        progress.seconds += time.perf_counter() - started
        if bar is not None:
            bar.close()

    def _forward_backward(self, inputs: Any, targets: Any, sync: bool) -> tuple[float, dict[str, float], int]:
        """One micro-batch; an all-unreadable one still takes part (weight 0) so processes stay in step."""
        count = len(inputs)
        if count == 0:
            inputs, targets = self.task.placeholder_batch()
        inputs = batch_inputs(inputs, self.device, self.config.channels_last)
        targets = move_to(targets, self.device)
        no_sync = getattr(self.network, "no_sync", None)
        context = no_sync() if no_sync is not None and not sync else contextlib.nullcontext()
        with context:
            with autocast(self.device, self.config.amp):
                loss, terms = self.task.training_loss(self.network, inputs, targets)
            weight = (1.0 if count else 0.0) / self.config.accum_steps
            self.scaler.scale(loss * weight).backward()
        return loss.item(), {name: float(value) for name, value in terms.items()}, count

    def _optimizer_step(self) -> None:
        if self.config.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, float]:
        batches = self.val_loader
        bar = self._progress_bar(len(batches) if isinstance(batches.dataset, Sized) else None, "validate")
        if bar is not None:
            batches = _counting(batches, bar)
        metrics = self.task.evaluate(self.eval_model, batches)
        if bar is not None:
            bar.close()
        return metrics

    def finish_epoch(self, metrics: dict[str, float]) -> None:
        progress = self.progress
        names = sorted(progress.term_sums)
        loss_sum, images, skipped, seconds, *terms = self.processes.sum(
            [progress.loss_sum, progress.images, progress.skipped, progress.seconds]
            + [progress.term_sums[name] for name in names]
        )
        seconds /= self.processes.world
        validation = {key: value for key, value in metrics.items() if key != "skipped"}
        row = {
            "epoch": progress.epoch + 1,
            "train_loss": loss_sum / max(images, 1),
            **{name: total / max(images, 1) for name, total in zip(names, terms, strict=True)},
            **validation,
            "lr": self.current_lr,
            "images_per_sec": images / seconds if seconds else math.nan,
            "step": progress.step,
            "skipped_images": int(skipped + metrics.get("skipped", 0)),
        }
        progress.history.append(row)
        progress.epoch += 1
        progress.start_epoch()
        self.save_checkpoint()
        if not self.processes.is_main:
            return
        self.task.after_epoch(self.eval_model, row["epoch"], self.output_dir)
        self._log(row, validation)

    # -- output --------------------------------------------------------------------------------
    def _log(self, row: dict[str, Any], validation: dict[str, float]) -> None:
        history = self.progress.history
        with atomic_write(self.output_dir / "metrics.jsonl") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in history)
        print(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}  {self.task.describe(validation)}  "
            f"{row['images_per_sec']:.1f} img/s"
            + (f"  ({row['skipped_images']} unreadable images skipped)" if row["skipped_images"] else ""),
            flush=True,
        )
        try:
            from .plots import plot_curves

            plot_curves(history, self.output_dir / "curves.png")
        except ImportError:
            pass
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def _open_tensorboard(self) -> None:
        if not self.processes.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))

    def _progress_bar(self, total: int | None, description: str):
        if not self.processes.is_main:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, disable=None)

    def save_model(self) -> Path:
        """The final model (the EMA weights when EMA is on), as the task saves it."""
        directory = self.output_dir / "model"
        self.task.save_model(self.eval_model, directory)
        return directory


def _counting(batches, bar):
    for batch in batches:
        yield batch
        bar.update(1)


def train(
    config: TrainConfig,
    resume: str | Path | bool | None = None,
    overwrite: bool = False,
    task_class: type[Task] | None = None,
) -> list[dict]:
    """Run (or, with `resume`, continue) training; returns the per-epoch metrics. `task_class` plugs in
    a task of your own (default: the built-in task named by `config.task`)."""
    processes = distributed.start(config.device)
    try:
        output_dir = Path(config.output_dir)
        last = output_dir / CHECKPOINT_NAME
        if resume is True:
            resume = last
        if not resume and last.exists() and not overwrite:
            raise FileExistsError(
                f"{output_dir} already holds a run ({last}); pass --resume to continue it, "
                "--overwrite to start over, or another --output-dir"
            )
        trainer = Trainer(config, processes, task_class)
        return trainer.fit(resume or None)
    finally:
        distributed.stop()
