"""The training loop shared by both phases: one process or many (torchrun), exact resumption.

* AdamW (weight decay on matrices only), linear warm-up then cosine decay, gradient clipping, gradient
  accumulation, mixed precision (bfloat16 autocast anywhere; float16 with a gradient scaler on CUDA), gradient
  checkpointing, one seed for everything (each process draws its own dropout stream from it).
* A step consumes exactly ``accumulate`` usable micro-batches and syncs gradients on the last. A micro-batch
  with no usable row on any process (every image unreadable) is skipped by every process and counted; one
  with rows somewhere is used by every process, with however many rows each holds (zero included), so that
  every process takes part in every collective.
* Several processes: started by ``torchrun``, joined with gloo on CPU or NCCL on GPU, wrapped in
  ``DistributedDataParallel``. ``batch_size`` is per process; the global batch of a step is
  ``batch_size * processes * accumulate``. Contrastive negatives span ``batch_size * processes`` rows: each
  micro-batch is its own contrastive problem, so accumulation grows the step, not the set of negatives.
* Checkpoints (``checkpoints/step-NNNNNN``: weights, optimizer, schedule, scaler, each process's RNG and the
  data position) are written into a temporary folder and renamed into place. ``resume=True`` continues from
  the newest: the steps after it give the same losses as an uninterrupted run, and a finished run continues
  when given more ``steps`` or ``epochs``.
* Each step's loss, learning rate and throughput go to the progress bar and to ``log.jsonl``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from altclip.data.workers import die_with_parent
from altclip.errors import InputError
from altclip.files import atomic_write_bytes
from altclip.modeling.models import PreTrainedModel
from altclip.modeling.weights import load_state_dict, resolve_weights, save_weights
from altclip.processing.processor import Processor
from altclip.runtime import distributed
from altclip.runtime.hardware import SHORT_NAMES, TRAINING_PRECISIONS
from altclip.tables import Result
from altclip.train.data import ShardStream, micro_batch_indices
from altclip.train.objectives import Objective, trainable_parameters

AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}  # float32: no autocast


@dataclass
class TrainConfig:
    out: Path
    steps: int | None = None  # optimizer steps in all; None: epochs * steps per epoch
    epochs: int = 1
    batch_size: int = 32  # per process, per micro-batch
    accumulate: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 0
    min_lr_ratio: float = 0.0
    clip_grad: float | None = 1.0
    precision: str = "float32"  # or bfloat16/float16 under autocast (fp32, bf16, fp16: the names before 0.2)
    gradient_checkpointing: bool = False
    padding_free: bool = True  # XLM-R towers skip their padding (``PreTrainedModel.padding_free_enable``)
    group_by_length: bool = False  # batches of texts of about one length: less padding (``micro_batch_indices``)
    patch_dropout: float = 0.0  # the share of patch tokens a training image tower drops (``patch_dropout_enable``)
    seed: int = 0
    save_every: int = 0  # steps between checkpoints; 0: only the last one
    keep: int = 2  # newest checkpoints kept; 0: none once the final model is written
    resume: bool = False
    workers: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.precision = SHORT_NAMES.get(self.precision, self.precision)
        if self.precision not in ("float32", *AUTOCAST):
            raise InputError(f"precision must be one of {TRAINING_PRECISIONS}, got {self.precision!r}")
        if self.clip_grad == 0:  # 0 turns clipping off, as None does
            self.clip_grad = None
        for name in ("batch_size", "accumulate", "epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("keep", "save_every", "workers", "warmup"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}")


@dataclass
class Phase:
    """What a training phase hands the loop. ``dataset`` and ``collate`` go to loader worker processes, so
    they must pickle (module-level classes, no closures). ``collate`` returns the batch's tensors, ``size``
    (the rows it kept) and, optionally, ``skipped`` (why each dropped row was dropped)."""

    objective: Objective  # forward(batch) -> loss
    model: PreTrainedModel  # the model that trains and is checkpointed
    processor: Processor  # saved beside the final model
    dataset: Dataset
    collate: Callable[[list[Any]], dict[str, Any]]
    skipped: Counter = field(default_factory=Counter)
    stream: ShardStream | None = None  # data from tar shards: it orders the dataset's tasks
    lengths: Callable[[], Sequence[int]] | None = None  # each sample's tokens, for ``group_by_length``

    def __post_init__(self) -> None:
        if self.stream is not None:
            self.stream.skipped = self.skipped  # what the shards skip is counted with the rest

    def export(self, folder: Path) -> None:
        """The final Hugging Face folder: config, weights, processor files."""
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)


@dataclass
class FitResult(Result):
    """What a finished ``Trainer.fit`` did: its steps, the epochs it started, what it skipped, its final model."""

    steps: int
    epochs_started: int
    skipped: dict[str, int]  # why -> rows dropped, over every process
    model: str  # the final Hugging Face folder


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    micro: int = 0  # micro-batches of this epoch already consumed


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def process_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s random streams (dropout): its own, and ``seed`` itself for rank 0."""
    return seed + 1_000_003 * rank


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    folder = out / "checkpoints"
    return sorted(p for p in folder.glob("step-*") if p.is_dir()) if folder.is_dir() else []


NO_ROWS = "micro-batch with no usable row"
RESUME_MUST_MATCH = ("batch_size", "seed")  # with the world size, they fix the data order


class Trainer:
    def __init__(self, phase: Phase, config: TrainConfig) -> None:
        self.phase, self.config = phase, config
        self._owns_process_group = not distributed.joined()
        self.group = distributed.setup(config.device)
        if not self.group.main:  # what the data files skipped is counted by process 0 alone
            phase.skipped.clear()
        torch.manual_seed(process_seed(config.seed, self.group.rank))
        random.seed(process_seed(config.seed, self.group.rank))
        if config.precision == "float16" and self.group.device.type != "cuda":
            raise InputError("float16 training needs a GPU (its gradient scaler is CUDA-only); use bfloat16 on CPU")
        if config.gradient_checkpointing:
            phase.model.gradient_checkpointing_enable()
        phase.model.padding_free_enable(config.padding_free)
        phase.model.patch_dropout_enable(config.patch_dropout)
        phase.objective.to(self.group.device).train()
        self.module: torch.nn.Module = phase.objective
        if self.group.world > 1:
            ids = [self.group.device.index] if self.group.device.type == "cuda" else None
            self.module = DistributedDataParallel(phase.objective, device_ids=ids)
        params = trainable_parameters(phase.objective)
        if not params:
            raise InputError("nothing to train: every parameter of the objective is frozen")
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr)
        if phase.stream is not None and config.steps is None:
            raise InputError("training from tar shards needs --steps: an epoch's length is not known before reading")
        self._lengths = self._sample_lengths()
        self.steps_per_epoch = len(self._epoch_batches(0)) // config.accumulate if phase.stream is None else 1
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{len(phase.dataset)} examples make no step of "
                f"{config.batch_size * self.group.world * config.accumulate}"
            )
        self.total = config.steps or config.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.warmup, self.total, config.min_lr_ratio)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "float16")
        self.progress = Progress()
        self._stream_start: dict[str, Any] | None = None  # where a resumed stream picks up
        self._saved_step = -1
        if config.resume:
            self._resume()

    # -- data -------------------------------------------------------------------------------------

    def _sample_lengths(self) -> Sequence[int] | None:
        if not self.config.group_by_length:
            return None
        if self.phase.stream is not None or self.phase.lengths is None:
            raise InputError("--group-by-length needs a data file (tar shards are streamed, their lengths unknown)")
        return self.phase.lengths()

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        c = self.config
        batches = micro_batch_indices(
            len(self.phase.dataset), c.batch_size, self.group.world, self.group.rank, c.seed, epoch, self._lengths
        )
        return batches[: len(batches) // c.accumulate * c.accumulate]

    def _loader(self) -> DataLoader:
        c, stream = self.config, self.phase.stream
        if stream is not None:
            start, self._stream_start = self._stream_start, None
            batches: Any = stream.batches(
                c.batch_size, self.group.world, self.group.rank, c.seed, self.progress.epoch, start
            )
        else:
            batches = self._epoch_batches(self.progress.epoch)[self.progress.micro :]
            if getattr(self.phase.dataset, "per_epoch", False):  # keys (epoch, index): per-epoch augmentation
                batches = [[(self.progress.epoch, i) for i in batch] for batch in batches]
        # its own generator: worker seeds must not draw from the global RNG, which dropout replays on resume
        generator = torch.Generator().manual_seed(self.config.seed + self.progress.epoch)
        workers = self.config.workers
        return DataLoader(
            self.phase.dataset,
            batch_sampler=batches,
            collate_fn=self.phase.collate,
            num_workers=workers,
            generator=generator,
            worker_init_fn=die_with_parent if workers else None,
        )

    def _micro_batches(self) -> Iterator[dict[str, Any]]:
        """Usable micro-batches, epoch after epoch, the data position kept in ``self.progress``.

        A micro-batch without a row on any process is skipped by all of them (and counted once). An epoch
        that gives no usable micro-batch from its start is an error; an epoch resumed at its end is not.
        """
        while True:
            from_start, usable = self.progress.micro == 0, 0
            for batch in self._loader():
                if self.phase.stream is not None:  # shards end at different points: the first to end ends the epoch
                    size, ended = self.group.sum(batch["size"], 0)
                    if ended:
                        break
                else:
                    size = self.group.sum(batch["size"])[0]
                self.progress.micro += 1
                self.phase.skipped.update(batch.pop("skipped", []))
                batch.pop("size")
                if size == 0:
                    if self.group.main:  # every process skips it: count it once
                        self.phase.skipped[NO_ROWS] += 1
                    continue
                usable += 1
                yield batch
            else:
                if self.phase.stream is not None:
                    self.group.sum(0, 1)  # tell the others this process has ended its epoch
            if from_start and usable == 0:
                raise InputError(
                    f"epoch {self.progress.epoch} gave no usable batch (skipped so far: "
                    f"{dict(self._global_skipped())}); check the data's image paths"
                )
            self.progress.epoch, self.progress.micro = self.progress.epoch + 1, 0

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self) -> Path:
        """Write ``checkpoints/step-NNNNNN`` (every process calls this; each writes its RNG state)."""
        target = self.config.out / "checkpoints" / f"step-{self.progress.step:06d}"
        tmp = target.with_name(f".{target.name}.tmp")
        self._saved_step = self.progress.step
        skipped = self._global_skipped()
        if self.group.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.group.barrier()
        torch.save(_rng_state(), tmp / f"rng-{self.group.rank:05d}.pt")  # each process its own dropout stream
        if self.phase.stream is not None:  # and its own place in its shards: shard, offset, shuffle buffer
            position = self.phase.stream.position(self.progress.micro)
            (tmp / f"stream-{self.group.rank:05d}.json").write_text(json.dumps(position) + "\n")
        self.group.barrier()
        if self.group.main:
            save_weights(self.phase.model.state_dict(), tmp)
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
            }
            torch.save(state, tmp / "training_state.pt")
            info = {
                **asdict(self.progress),
                "skipped": dict(skipped),
                "world_size": self.group.world,
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
            }
            (tmp / "trainer.json").write_text(json.dumps(info, indent=2) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
            self._prune(keep=max(1, self.config.keep))  # the newest stays while training, for --resume
        self.group.barrier()
        return target

    def _prune(self, keep: int) -> None:
        found = checkpoint_dirs(self.config.out)
        for old in found[: len(found) - keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self) -> None:
        found = checkpoint_dirs(self.config.out)
        if not found:
            return  # nothing yet: start from the beginning
        latest = found[-1]
        info = json.loads((latest / "trainer.json").read_text())
        if info["world_size"] != self.group.world:
            raise InputError(
                f"{latest} was written by {info['world_size']} processes, not {self.group.world}; "
                "resume with the same number so the data order is the same"
            )
        for name in RESUME_MUST_MATCH:
            if info["config"].get(name, getattr(self.config, name)) != getattr(self.config, name):
                raise InputError(
                    f"{latest} was written with {name} {info['config'][name]}, not {getattr(self.config, name)}; "
                    "resume with the same value so the data order is the same"
                )
        state_dict = load_state_dict(resolve_weights(latest))
        self.phase.model.load_state_dict(state_dict, strict=True)
        state = torch.load(latest / "training_state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = latest / f"rng-{self.group.rank:05d}.pt"
        _set_rng_state(torch.load(rng, weights_only=True) if rng.exists() else state["rng"])  # older: rank 0's only
        self.progress = Progress(info["step"], info["epoch"], info["micro"])
        if self.phase.stream is not None:
            self._stream_start = json.loads((latest / f"stream-{self.group.rank:05d}.json").read_text())
        self._saved_step = self.progress.step
        if self.group.main:  # the counts of every process so far; the others count from here on
            self.phase.skipped.update(info["skipped"])
        self._trim_log(self.progress.step)

    # -- log --------------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.config.out / "log.jsonl"

    def _trim_log(self, step: int) -> None:
        """Drop log lines past the checkpoint being resumed: those steps run again."""
        if not self.group.main or not self.log_path.exists():
            return
        kept = [line for line in self.log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
        atomic_write_bytes(self.log_path, "".join(f"{line}\n" for line in kept).encode())

    def _log(self, record: dict[str, Any]) -> None:
        if self.group.main:
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # -- the loop ---------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST.get(self.config.precision)
        return torch.autocast(self.group.device.type, dtype=dtype, enabled=dtype is not None)

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients on the last micro-batch of a step only."""
        if self.group.world > 1 and not sync:
            return self.module.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.group.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def _step(self, micro_batches: Iterator[dict[str, Any]]) -> torch.Tensor:
        """One optimizer step over exactly ``accumulate`` micro-batches, gradients synced on the last; the
        mean of their losses (this process's, still on the device)."""
        c = self.config
        total = torch.zeros((), device=self.group.device)
        for i in range(c.accumulate):
            batch = self._to_device(next(micro_batches))
            with self._gradient_sync(i == c.accumulate - 1):
                with self._autocast():
                    loss = self.module(batch)
                self.scaler.scale(loss / c.accumulate).backward()
            total += loss.detach().float()
        if c.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(trainable_parameters(self.phase.objective), c.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.phase.objective.after_step()
        self.progress.step += 1
        return total / c.accumulate

    def fit(self, on_step: Callable[[int, float], bool | None] | None = None) -> FitResult:
        c = self.config
        c.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(
            total=self.total,
            initial=self.progress.step,
            desc="training",
            unit="step",
            disable=not c.progress or not self.group.main,
            dynamic_ncols=True,
        )
        samples_per_step = c.batch_size * self.group.world * c.accumulate
        micro_batches = self._micro_batches()
        started = time.perf_counter()
        try:
            while self.progress.step < self.total:
                loss = self._step(micro_batches)
                loss_sum, skipped = self.group.sum(loss, sum(self.phase.skipped.values()))
                elapsed, started = time.perf_counter() - started, time.perf_counter()
                record = {
                    "step": self.progress.step,
                    "epoch": self.progress.epoch,
                    "loss": loss_sum / self.group.world,
                    "lr": self.scheduler.get_last_lr()[0],
                    "samples_per_s": samples_per_step / elapsed,
                    "skipped": int(skipped),
                }
                self._log(record)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", rate=f"{record['samples_per_s']:.1f}/s"
                )
                if c.save_every and self.progress.step % c.save_every == 0:
                    self.save()
                if on_step is not None and on_step(self.progress.step, record["loss"]):
                    break  # stopped early (``on_step`` said so): the checkpoint and the export follow
        finally:
            micro_batches.close()
            bar.close()
        if self._saved_step != self.progress.step:
            self.save()
        skipped = self._global_skipped()
        if self.group.main:
            self.phase.export(c.out / "model")
            if c.keep == 0:
                self._prune(keep=0)
        self.group.barrier()
        return FitResult(self.progress.step, self.progress.epoch + 1, dict(skipped), str(c.out / "model"))

    # -- across processes -------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the process group this trainer joined (every process, after ``fit``).

        Gloo's worker threads live as long as the group does, and DDP holds the group: a group still alive
        when the interpreter shuts down aborts the process ("terminate called without an active exception").
        So DDP goes first, then, once every process is here, the group.
        """
        if self.group.world > 1 and self._owns_process_group and dist.is_initialized():
            self.module = self.phase.objective
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()

    def _global_skipped(self) -> Counter:
        """What every process skipped so far, added up."""
        if self.group.world == 1:
            return Counter(self.phase.skipped)
        counters: list[Any] = [None] * self.group.world
        dist.all_gather_object(counters, dict(self.phase.skipped))
        return sum((Counter(c) for c in counters), Counter())
