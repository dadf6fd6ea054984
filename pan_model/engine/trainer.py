"""The training loop: PK batches -> model -> ReIDLoss -> optimiser step, with evaluation,
best-model keeping, checkpoints that resume exactly, a NaN/Inf guard and clean stops on
Ctrl-C / SIGTERM. Runs as one process or as one of several under torchrun (DDP): every
process trains on its share of each global batch of data.batch_size images, the logged
losses are the mean over the processes, and the main process alone evaluates and writes
files. A torchrun restart after a failure (--max-restarts) resumes from checkpoint_last.pt.

Files written into ``config.output_dir`` (by the main process):
  config.yaml          the resolved configuration
  log.jsonl            step / train / eval records (see run_log.RunLog)
  checkpoint_last.pt   full training state (model, optimiser, schedule, scaler, RNG, position)
  model_best.pt        weights, config and scores of the best evaluated epoch
  metrics.json         scores of the final evaluation, and of the best epoch
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .. import build_model
from ..config import Config
from .losses import ReIDLoss
from ..models import unwrap_model
from . import distributed
from .checkpoint import capture_rng_state, check_resumable, load_checkpoint, restore_rng_state, save_checkpoint
from .distributed import DistributedContext
from .loaders import RunData, build_run_data
from .optim import WarmupMultiStepLR, build_optimizer
from .run_log import RunLog

CHECKPOINT_NAME = "checkpoint_last.pt"
AUTO_RESUME = "auto"  # train(resume=...): the run's checkpoint_last.pt if there is one, else a fresh start
BEST_NAME = "model_best.pt"
METRICS_NAME = "metrics.json"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = ("auto", *AMP_DTYPES)  # train.amp
SCORES = ("rank1", "rank5", "rank10", "mAP", "mINP")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped without overwriting the last checkpoint."""


def select_device(name: str = "auto") -> torch.device:
    """ "auto": the first CUDA device if there is one, then Apple's MPS, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `amp` ("auto" means bf16 on GPUs that support it, else none)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if amp not in AMP_DTYPES:
        raise ValueError(f"train.amp must be one of {', '.join(AMP_MODES)}; got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"train.amp=fp16 needs a CUDA device (loss scaling); got {device}. Use bf16 or none")
    return AMP_DTYPES[amp]


class _StopOnSignals:
    """While active, SIGINT/SIGTERM call `on_signal` (the loop then stops at the next step
    boundary and checkpoints); a second Ctrl-C interrupts at once."""

    def __init__(self, on_signal: Callable[[str], None]):
        self.on_signal = on_signal
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, _frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.on_signal(signal.Signals(number).name)

    def __exit__(self, *_exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class _Progress:
    """The running epoch's progress, when train.progress is on: a live bar where stderr is a
    terminal; elsewhere (CI, nohup, a file) one line every train.log_every steps, since a
    bar's carriage-return updates would fill the log."""

    def __init__(self, enabled: bool, title: str, steps: int, done: int, later_steps: int):
        self.title, self.steps, self.later_steps = title, steps, later_steps
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = None
        if enabled and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=done, desc=title, dynamic_ncols=True, leave=False)

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        if self.bar is not None:
            self.bar.close()

    def update(self, done: int, loss: float, lr: float, images_per_s: float, steps_per_s: float, due: bool) -> None:
        """After the epoch's step `done`; `due`: a line is due at this step."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}")
            self.bar.update()
        elif self.lines and due:
            # the run's training steps left at this epoch's pace (evaluations not counted)
            eta = datetime.timedelta(seconds=round((self.steps - done + self.later_steps) / steps_per_s))
            print(
                f"{self.title}  step {done}/{self.steps}  {steps_per_s:.2f} steps/s  loss {loss:.4f}  "
                f"lr {lr:.2e}  ETA {eta}",
                flush=True,
            )


class Trainer:
    """Owns the model, loss, optimiser, schedule and data of one run; `fit()` trains it."""

    def __init__(
        self,
        config: Config,
        model: nn.Module,
        data: RunData,
        device: torch.device,
        context: DistributedContext = DistributedContext(),
    ):
        self.config = config
        self.data = data
        self.device = device
        self.context = context
        self.output_dir = Path(config.output_dir)
        train, optim = config.train, config.optim

        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=self.memory_format)
        self.loss_fn = ReIDLoss(**dataclasses.asdict(config.loss))
        self.optimizer = build_optimizer(
            self.model, optim.name, optim.lr, optim.weight_decay, optim.momentum, optim.mask_lr_factor
        )
        self.scheduler = WarmupMultiStepLR(
            self.optimizer, optim.milestones, optim.gamma, optim.warmup_epochs, optim.warmup_factor
        )
        self.amp_dtype = resolve_amp(train.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        self.train_model = self.model
        if context.enabled:
            device_ids = [device.index] if device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if train.compile:
            self.train_model = torch.compile(self.train_model)

        self.log = RunLog(self.output_dir, enabled=context.is_main)
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed in the running epoch
        self.global_step = 0
        self.epoch_sums: dict = {}  # per-component loss sums over the running epoch's steps
        self.best: dict = {}  # {"epoch": e, "score": s, <scores>} of the best evaluation so far
        self.last_scores: dict = {}  # scores (and CMC) of the latest evaluation
        self.stop_reason: Optional[str] = None

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after the running step and write a checkpoint (signal handlers call this)."""
        self.stop_reason = reason

    # ---- state -----------------------------------------------------------------------
    def _model_state(self) -> dict:
        """What rebuilds the model (checkpoint.load_model reads it from either file)."""
        return {
            "config": self.config.to_dict(),
            "num_classes": self.data.num_classes,
            "model": unwrap_model(self.model).state_dict(),
        }

    def state_dict(self) -> dict:
        return {
            **self._model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_sums": dict(self.epoch_sums),
            "best": dict(self.best),
            "sampler": self.data.epoch_sampler.state_dict(),
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.global_step = state["global_step"]
        # (older checkpoints also stored "steps", which always equals step_in_epoch)
        self.epoch_sums = {name: value for name, value in state["epoch_sums"].items() if name != "steps"}
        self.best = dict(state["best"])
        self.data.epoch_sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        if self.context.is_main:
            save_checkpoint(self.state_dict(), self.checkpoint_path)

    def resume(self, path: "str | Path") -> None:
        """Continue from a checkpoint_last.pt of this run (checkpoint.check_resumable): the
        following steps repeat those of the uninterrupted run (exactly on CPU; on GPUs up to
        non-deterministic kernels). AUTO_RESUME: from the output folder's checkpoint_last.pt
        if there is one; otherwise the run starts from the beginning."""
        if path == AUTO_RESUME:
            path = self.checkpoint_path
            exists = path.is_file()
            found, missing = distributed.any_rank_true([exists, not exists], self.device)
            if found and missing:
                raise RuntimeError(f"{path} exists for some processes only: output_dir must be storage they all share")
            if not found:
                self._print(f"no {CHECKPOINT_NAME} in {self.output_dir} yet: starting from the beginning")
                return
        state = load_checkpoint(path, map_location=self.device)
        check_resumable(state, self.config, self.data.num_classes, path)
        self.load_state_dict(state)
        self.log.truncate_after(self.global_step)
        self._print(
            f"resumed from {path} at epoch {self.epoch + 1}, step {self.step_in_epoch} (global step {self.global_step})"
        )

    # ---- loop ------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until config.train.epochs; returns {"status": "finished" | "interrupted",
        and the final scores when finished}."""
        train = self.config.train
        nothing_to_train = self.epoch >= train.epochs
        if self.global_step == 0:
            self.log.truncate_after(0)  # a fresh run in a used folder starts a fresh log
        with _StopOnSignals(self.request_stop):
            while self.epoch < train.epochs:
                finished_epoch = self._train_epoch()
                if finished_epoch:
                    self._end_epoch()
                if self._stop_agreed():
                    self.save_checkpoint()
                    reason = self.stop_reason or "stop requested by another process"
                    self._print(f"{reason}: checkpoint written to {self.checkpoint_path}; continue with --resume")
                    return {"status": "interrupted", "epoch": self.epoch, "step_in_epoch": self.step_in_epoch}
        if nothing_to_train:  # resumed at the end: report the scores all the same
            self._evaluate_and_keep_best()
        self.log.close()
        return {"status": "finished", **self._write_metrics()}

    def _end_epoch(self) -> None:
        train = self.config.train
        self.scheduler.step()
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_sums = {}
        last = self.epoch == train.epochs
        if last or (train.eval_every > 0 and self.epoch % train.eval_every == 0):
            self._evaluate_and_keep_best()
        if last or (train.checkpoint_every > 0 and self.epoch % train.checkpoint_every == 0):
            self.save_checkpoint()

    def _steps_in_epoch(self) -> int:
        sampler = self.data.epoch_sampler.sampler
        steps = len(sampler) // self.data.batch_size
        if self.config.train.max_steps_per_epoch is not None:
            steps = min(steps, self.config.train.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(
                f"an epoch of {len(sampler)} samples holds no batch of {self.data.batch_size}; "
                f"lower data.batch_size or use more identities"
            )
        return steps

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch; False when stopped before its end."""
        train = self.config.train
        self.data.epoch_sampler.set_epoch(self.epoch, start=self.step_in_epoch * self.data.batch_size)
        steps = self._steps_in_epoch()
        lr = self.optimizer.param_groups[0]["lr"]
        self.train_model.train()
        progress = _Progress(
            self.context.is_main and train.progress,
            f"epoch {self.epoch + 1}/{train.epochs}",
            steps,
            self.step_in_epoch,
            later_steps=(train.epochs - self.epoch - 1) * steps,
        )
        started, first_step, images_seen = time.perf_counter(), self.step_in_epoch, 0
        with progress:
            for images, pids, *_ in self.data.train_loader:
                if self.step_in_epoch >= steps:
                    break
                components, stop = self._train_step(images, pids)
                self.step_in_epoch += 1
                self.global_step += 1
                images_seen += images.shape[0] * self.context.world_size
                for name, value in components.items():
                    self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value
                elapsed = time.perf_counter() - started
                throughput = images_seen / elapsed
                due = self.global_step % train.log_every == 0
                progress.update(
                    self.step_in_epoch, components["total"], lr, throughput, (self.step_in_epoch - first_step) / elapsed, due
                )
                if due:
                    self.log.write(self._record("step", self.epoch + 1, lr=lr, **components))
                if stop and self.step_in_epoch < steps:
                    return False  # (at an epoch's end, fit() checks again after the epoch's work)
        if self.step_in_epoch < steps:
            raise RuntimeError(f"the training loader ended after {self.step_in_epoch} of {steps} steps")
        means = {name: value / self.step_in_epoch for name, value in self.epoch_sums.items()}
        self.log.write(self._record("train", self.epoch + 1, lr=lr, images_per_s=round(throughput, 2), **means))
        self._print(
            f"epoch {self.epoch + 1}/{self.config.train.epochs}  loss {means['total']:.4f}  lr {lr:.2e}  "
            f"{throughput:.1f} img/s"
        )
        return True

    def _train_step(self, images: torch.Tensor, pids: torch.Tensor) -> tuple[dict, bool]:
        """One optimiser step; returns the loss components, their mean over the processes
        (each process's loss over its share: the loss whose mean gradient DDP applies), and
        whether any process was asked to stop. Components and the stop flag come to the host
        in one transfer and, under DDP, one all_reduce; a non-finite loss in any process makes
        the mean non-finite."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        pids = pids.to(self.device, non_blocking=True)
        with self._autocast():
            outputs = self.train_model(images)
        loss, components = self.loss_fn(outputs, pids)
        stop_flag = torch.tensor(float(self.stop_reason is not None), device=self.device)
        sums = distributed.sum_over_ranks(torch.stack([*(v.float() for v in components.values()), stop_flag])).tolist()
        stop = sums.pop() > 0
        values = {name: total / self.context.world_size for name, total in zip(components, sums)}
        if not math.isfinite(values["total"]):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); training stopped. "
                f"The last good checkpoint is {self.checkpoint_path if self.checkpoint_path.exists() else 'not written yet'}. "
                f"Try a lower optim.lr, train.amp=none or train.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return values, stop

    def _autocast(self):
        """Mixed precision per train.amp (a disabled context when it resolves to none)."""
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop (all processes then stop at the same step)."""
        return distributed.any_rank_true([self.stop_reason is not None], self.device)[0]

    # ---- evaluation ------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Scores of the current model on query vs gallery (main process; others wait)."""
        from ..evaluation import evaluate_as_configured

        scores: dict = {}
        if self.context.is_main:
            with self._autocast():  # evaluate() runs the model in eval mode and inference mode
                scores = evaluate_as_configured(
                    unwrap_model(self.model), self.config.eval, self.data.query_loader, self.data.gallery_loader,
                    self.device,
                )
        distributed.barrier()
        return scores

    def _evaluate_and_keep_best(self) -> None:
        scores = self.evaluate()
        if not self.context.is_main:
            return
        summary = {name: float(scores[name]) for name in SCORES if name in scores}
        self.log.write(self._record("eval", self.epoch, **summary))
        self._print("  ".join(f"{name} {100 * value:.1f}%" for name, value in summary.items()))
        score = summary[self.config.train.best_metric]
        if not self.best or score > self.best["score"]:
            self.best = {"epoch": self.epoch, "score": score, **summary}
            save_checkpoint(
                {**self._model_state(), "epoch": self.epoch, "scores": summary}, self.output_dir / BEST_NAME
            )
        self.last_scores = {**summary, "cmc": [float(v) for v in scores.get("cmc", [])]}

    def _write_metrics(self) -> dict:
        """metrics.json: the final evaluation's scores at the top level, the best epoch's under "best"."""
        metrics = {**self.last_scores, "epoch": self.epoch, "best": self.best}
        if self.context.is_main:
            (self.output_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics

    # ---- helpers ---------------------------------------------------------------------
    def _record(self, kind: str, epoch: int, **values) -> dict:
        """A log record; `epoch` counts from 1 (the epoch a step belongs to, or just evaluated)."""
        return {"kind": kind, "epoch": epoch, "step": self.step_in_epoch, "global_step": self.global_step, **values}

    def _print(self, message: str) -> None:
        if self.context.is_main:
            print(message, flush=True)


def train(config: Config, resume: "str | Path | None" = None) -> dict:
    """Build everything a run needs from `config` and train it (any process of a torchrun
    launch may call this); returns Trainer.fit()'s summary.

    resume: a checkpoint_last.pt to continue from; AUTO_RESUME ("auto"): the output folder's
    checkpoint_last.pt if there is one, else a fresh start. In a process that torchrun
    restarted after a failure (--max-restarts), None means "auto"."""
    device = distributed.process_device(select_device(config.train.device))
    threads = torch.get_num_threads()
    if device.type == "cpu" and config.train.cpu_threads:
        torch.set_num_threads(config.train.cpu_threads)
    context = distributed.init_distributed(device)
    try:
        torch.manual_seed(config.train.seed)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
        data = build_run_data(config, context, pin_memory=device.type == "cuda")
        model = build_model(config.model.arch, data.num_classes, **config.model.options())
        weights = model.backbone.weights_file
        if context.is_main:
            print(f"backbone {config.model.resolved().backbone}: {f'weights from {weights}' if weights else 'random initialisation'}", flush=True)
        trainer = Trainer(config, model, data, device, context)
        if resume is None and distributed.restart_count() > 0:
            resume = AUTO_RESUME
        if resume is not None:
            trainer.resume(resume)  # before config.yaml: a refused checkpoint leaves the folder as it was
        if context.is_main:
            trainer.output_dir.mkdir(parents=True, exist_ok=True)
            (trainer.output_dir / "config.yaml").write_text(config.resolved().to_yaml())
        return trainer.fit()
    finally:
        distributed.destroy()
        torch.set_num_threads(threads)
