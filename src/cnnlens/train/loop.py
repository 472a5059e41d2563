"""The training loop: one function, :func:`train`, that turns a :class:`TrainConfig` into a run folder.

Every epoch ends with the same commit sequence: best weights (when validation accuracy improved),
history.csv, TensorBoard scalars, and last the checkpoint, each file written atomically; curves.png is
drawn when the session ends. The checkpoint holds the model, optimiser, schedule, history and every
random-number state the loop uses (shuffling, augmentation, PyTorch's global generator for dropout), so a
run killed at any moment and resumed with ``resume=True`` ends with exactly the history and weights of an
uninterrupted run (on the same device and thread count).

Nothing is written until the data, the model and the split have loaded: a bad spec or a bad row leaves
the run folder (even an old run under ``overwrite=True``) as it was. A new run's folder starts through
:func:`cnnlens._atomic.output_dir`: ``overwrite=True`` replaces only an earlier cnnlens run, never a
folder holding the data or files cnnlens did not write.

A resumed run continues exactly the run its checkpoint holds: a ``config.json`` edited since (``lr``,
``batch_size`` ...) is refused, naming the field and both values. The one change accepted on purpose is
more ``epochs`` for a run with the ``constant`` schedule, whose learning rate does not depend on them.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens import _atomic
from cnnlens._progress import progress_bar
from cnnlens._types import PathArg
from cnnlens.data.imageset import ImageSet
from cnnlens.train import run as runfiles
from cnnlens.train.augment import Augment, describe_augmentation
from cnnlens.train.config import TrainConfig
from cnnlens.train.curves import plot_curves
from cnnlens.train.run import Run, load_run, resolve_device

log = logging.getLogger("cnnlens.train")

#: Images per forward pass when measuring validation loss and accuracy.
EVAL_BATCH_SIZE = 256
#: What a run folder holds (its output marker lists these); eval/, report/ ... are outputs of their own.
RUN_FILES = (runfiles.CONFIG_FILE, runfiles.WEIGHTS_FILE, runfiles.CHECKPOINT_FILE, runfiles.HISTORY_FILE,
             runfiles.CURVES_FILE, runfiles.SPLIT_FILE, runfiles.TENSORBOARD_DIR, runfiles.LOG_FILE)


def train(config: TrainConfig, out_dir: PathArg, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True) -> Run:
    """Train ``config.model`` on ``config.data`` and write the run folder ``out_dir``; return the loaded run.

    The model with the best validation accuracy is kept (``weights.safetensors``); training stops after
    ``config.epochs`` epochs, or earlier after ``config.patience`` epochs without improvement.

    Args:
        config: what to train and how.
        out_dir: the run folder. An existing non-empty folder is refused unless ``overwrite`` or ``resume``.
        overwrite: replace an earlier cnnlens run folder (swapped out once the new run's data and model
            have loaded); any other folder is refused (:class:`cnnlens._atomic.OutputRefused`).
        resume: continue the run in ``out_dir`` from its last completed epoch; ``config`` must equal the
            one the run was trained with except for device and thread count (and a larger ``epochs`` with
            the constant schedule).
        progress: show a progress bar with live loss and accuracy.

    >>> run = train(TrainConfig(data="synth:demo/data", epochs=10), "demo/run")   # doctest: +SKIP
    >>> run.history[-1]["val_acc"]                                                # doctest: +SKIP
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a cnnlens.train.TrainConfig, got {type(config).__name__}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run in the folder, overwrite deletes it")
    out = Path(out_dir)
    _check_folder(out, config, overwrite=overwrite, resume=resume)
    device = resolve_device(config.device)
    rng_devices = [device] if device.type == "cuda" else []
    # fork_rng: the caller's global random state is the same before and after training.
    with _threads(config.num_threads), _log_to_run(out) as open_log, torch.random.fork_rng(devices=rng_devices):
        _train(config, out, device, resume=resume, overwrite=overwrite, progress=progress, open_log=open_log)
    return load_run(out, device=device)


# ----------------------------------------------------------------------------------------------- setup

def _check_folder(out: Path, config: TrainConfig, *, overwrite: bool, resume: bool) -> None:
    """Refuse early (before any data is read) what cannot work; changes nothing on disk."""
    if resume:
        if not (out / runfiles.CONFIG_FILE).is_file():
            raise ValueError(f"nothing to resume at {out}: it has no {runfiles.CONFIG_FILE}; start a new run without --resume")
        stored = TrainConfig.from_dict(runfiles.read_manifest(out)["train"], source=str(out / runfiles.CONFIG_FILE))
        # epochs is checked against the checkpoint in _check_resume, which knows the schedule and progress
        diffs = {k: v for k, v in stored.differences(config).items() if k != "epochs"}
        if diffs:
            listed = "; ".join(f"{k}: run has {a!r}, given {b!r}" for k, a, b in ((k, *v) for k, v in diffs.items()))
            raise ValueError(f"cannot resume {out} with a different config ({listed}). Resume with the run's own "
                             "settings (only --device and --num-threads may change), or start a new run")
        return
    try:
        _atomic.check_output(out, kind="run", overwrite=overwrite, inputs=[runfiles.spec_path(config.data)])
    except _atomic.OutputRefused as err:
        if not overwrite and _atomic.output_kind(out) == "run":
            raise _atomic.OutputRefused(f"{err}; or pass --resume to continue the run in it") from None
        raise


def _check_resume(config: TrainConfig, ckpt: dict[str, Any] | None, out: Path) -> None:
    """Refuse to continue with a ``config`` (config.json plus the command line) other than the one the
    checkpoint was trained with, naming each changed field and both values. Another epoch count is accepted
    for the constant schedule (config.json is then updated, once the data has loaded)."""
    source = str(out / runfiles.CHECKPOINT_FILE)
    trained = TrainConfig.from_dict(ckpt["train"], source=source) if ckpt is not None else None
    if trained is not None:
        diffs = trained.differences(config)
        changed = {k: v for k, v in diffs.items() if k != "epochs"}
        if changed:
            listed = "; ".join(f"{k} is {b!r} in {runfiles.CONFIG_FILE} but the run was trained with {a!r}"
                               for k, (a, b) in changed.items())
            raise ValueError(f"cannot resume {out}: {listed} (recorded in {runfiles.CHECKPOINT_FILE}). Continuing would "
                             "make a run that is neither; put the trained value back in config.json, or start a new "
                             "run with the new settings in another --out")
        if "epochs" in diffs:
            done = int(ckpt["epoch"])
            if trained.schedule != "constant":
                raise ValueError(f"cannot resume {out} with epochs={config.epochs}: it was trained with "
                                 f"epochs={trained.epochs} and the {trained.schedule} schedule, whose learning rate is "
                                 "planned over all epochs, so another count would change the epochs already trained. "
                                 f"Resume with epochs={trained.epochs}, or start a new run (runs with --schedule "
                                 "constant can be extended)")
            if config.epochs < done:
                raise ValueError(f"cannot resume {out} with epochs={config.epochs}: {done} epochs are already done")
            log.info("epochs changed from %d to %d (constant schedule): %d epoch(s) done", trained.epochs, config.epochs, done)


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _log_to_run(out: Path) -> Iterator[Callable[[], None]]:
    """Collect cnnlens log records (training progress, the data loader's skipped rows) for ``out/train.log``.

    Records are held in memory until the yielded ``open_log()`` is called, once the run folder exists,
    and from then on appended to the file line by line (not atomically: after a kill a log should hold
    every line up to the kill).
    """
    logger = logging.getLogger("cnnlens")
    buffer = logging.handlers.MemoryHandler(capacity=10**6, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
    buffer.setLevel(logging.INFO)
    level = logger.level
    logger.addHandler(buffer)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    file_handler: list[logging.Handler] = []

    def open_log() -> None:
        handler = logging.FileHandler(out / runfiles.LOG_FILE, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        buffer.setTarget(handler)
        buffer.flush()
        logger.removeHandler(buffer)
        logger.addHandler(handler)
        file_handler.append(handler)

    try:
        yield open_log
    finally:
        logger.removeHandler(buffer)
        buffer.close()
        for handler in file_handler:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)


def _check_weights(out: Path, ckpt: dict[str, Any] | None) -> None:
    """A resumed run whose best weights were deleted continues only if the checkpoint holds them (its epoch
    is the best one; they are then rebuilt); otherwise say what is lost and how to get a run back."""
    if ckpt is None or ckpt["epoch"] == 0 or (out / runfiles.WEIGHTS_FILE).is_file():
        return
    if ckpt["best_epoch"] != ckpt["epoch"]:
        raise ValueError(runfiles.missing_weights(out))


def _load_training_data(config: TrainConfig, spec: str) -> ImageSet:
    from cnnlens.data import load_dataset

    skipped: list[Any] = []
    kwargs: dict[str, Any] = {"image_size": config.image_size, "resize": config.resize,
                              "skip_bad_rows": config.skip_bad_rows}
    if config.skip_bad_rows:
        kwargs["skipped"] = skipped
    data = load_dataset(spec, "train", **kwargs)
    if config.skip_bad_rows:
        log.info("skipped bad rows: %d (--skip-bad-rows)%s", len(skipped),
                 "".join(f"\n  {err}" for err in skipped[:20]) + ("\n  ..." if len(skipped) > 20 else ""))
    if len(data) == 0:
        raise ValueError(f"{config.data}: the train split has no images")
    unknown = int((data.labels < 0).sum())
    if unknown:
        raise ValueError(f"{config.data}: {unknown} training images have no label (-1); training needs labelled images")
    return data


def _split(config: TrainConfig, data: ImageSet, out: Path, resume: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from cnnlens.data import stratified_split

    if resume and (out / runfiles.SPLIT_FILE).is_file():
        return runfiles.read_split(out, len(data))
    train_index, val_index = stratified_split(data.labels, config.val_fraction, seed=config.seed, source=config.data)
    train_index, val_index = torch.as_tensor(train_index, dtype=torch.long), torch.as_tensor(val_index, dtype=torch.long)
    if len(train_index) == 0 or len(val_index) == 0:
        raise ValueError(f"val_fraction={config.val_fraction} of {len(data)} images leaves an empty "
                         f"{'training' if len(train_index) == 0 else 'validation'} set; change --val-fraction")
    return train_index, val_index


def _manifest(config: TrainConfig, data: ImageSet, out: Path, resume: bool) -> dict[str, Any]:
    c, h, w = data.input_shape
    manifest = runfiles.run_manifest(config, {"in_channels": c, "num_classes": len(data.classes), "input_size": [h, w]},
                                     data.input_shape, data.classes, len(data))
    if not resume:
        return manifest
    stored = runfiles.read_manifest(out)
    for key in ("model", "input_shape", "classes"):
        if stored[key] != manifest[key]:
            raise ValueError(f"cannot resume {out}: the data now gives {key}={manifest[key]!r}, "
                             f"but the run was trained with {stored[key]!r}; the dataset changed since training")
    return stored


def _optimizer(config: TrainConfig, model: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    params = model.parameters()
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
                              weight_decay=config.weight_decay)
    total = config.epochs * steps
    if config.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.25)
    elif config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = None
    return opt, sched


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split a permutation into batches; a last batch of one image joins the one before, because
    BatchNorm cannot normalise a batch of one."""
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


# -------------------------------------------------------------------------------------------- the loop

def _train(config: TrainConfig, out: Path, device: torch.device, *, resume: bool, overwrite: bool, progress: bool,
           open_log: Callable[[], None]) -> None:
    started = time.perf_counter()
    ckpt_path = out / runfiles.CHECKPOINT_FILE
    # Everything that can fail on bad input (checkpoint, data, model name, split) runs before the first
    # write, so a failed start leaves the folder as it was. The checkpoint is checked first: a refused
    # file fails fast, before a long data load.
    ckpt = runfiles.load_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if resume:
        _atomic.remove_stale_in(out)  # temporary files of a killed session
        _check_resume(config, ckpt, out)
        _check_weights(out, ckpt)
    # A resumed run finds its data even from another working directory (config.json keeps the absolute path).
    spec = runfiles.data_spec(runfiles.read_manifest(out)) if resume else config.data
    data = _load_training_data(config, spec)
    manifest = _manifest(config, data, out, resume)
    torch.manual_seed(config.seed)
    model = runfiles.build_model(manifest)
    train_index, val_index = _split(config, data, out, resume)
    if not resume:
        # The new folder is complete (config and split) before it replaces an earlier run in one swap.
        with _atomic.output_dir(out, kind="run", overwrite=overwrite, inputs=[runfiles.spec_path(config.data)],
                                files=RUN_FILES) as tmp:
            runfiles.write_json(tmp / runfiles.CONFIG_FILE, manifest)
            runfiles.write_split(tmp, config.seed, train_index, val_index, len(data))
    else:
        if manifest["train"]["epochs"] != config.epochs:  # more epochs asked for: the records say what runs
            manifest = {**manifest, "train": {**manifest["train"], "epochs": config.epochs}}
            runfiles.write_json(out / runfiles.CONFIG_FILE, manifest)
        if not (out / runfiles.SPLIT_FILE).is_file():  # killed before split.json was written
            runfiles.write_split(out, config.seed, train_index, val_index, len(data))
    open_log()

    # channels_last made small_cnn ~1.3x faster per step on CPU (oneDNN's preferred layout).
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    train_x, train_y = data.images[train_index].to(device), data.labels[train_index].to(device)
    val_x, val_y = data.images[val_index].to(device), data.labels[val_index].to(device)
    steps = len(_batches(torch.arange(len(train_index)), config.batch_size))
    opt, sched = _optimizer(config, model, steps)
    shuffle_gen = torch.Generator().manual_seed(config.seed + 1)
    augment_gen = torch.Generator().manual_seed(config.seed + 2)
    augment = Augment(flip=config.flip, shift=config.shift, rotation=config.rotation)

    state: dict[str, Any] = {"epoch": 0, "history": [], "best_val_acc": -1.0, "best_epoch": 0,
                             "epochs_without_improvement": 0, "finished": False}
    if ckpt is not None:
        _restore(ckpt, model, opt, sched, shuffle_gen, augment_gen, device, str(ckpt_path))
        state = {k: ckpt[k] for k in state}
        stopped_early = bool(config.patience) and state["epochs_without_improvement"] >= config.patience
        state["finished"] = stopped_early or state["epoch"] >= config.epochs  # more epochs may have been asked for
        log.info("resuming %s after epoch %d of %d", out, state["epoch"], config.epochs)
        if not (out / runfiles.WEIGHTS_FILE).is_file():  # _check_weights found the best epoch is this one
            runfiles.save_weights(out / runfiles.WEIGHTS_FILE, model)
            log.info("rebuilt %s from %s (epoch %d, the best)", runfiles.WEIGHTS_FILE, runfiles.CHECKPOINT_FILE, state["epoch"])
    else:
        log.info("training %s on %s: %d training / %d validation images, classes %s, device %s",
                 config.model, config.data, len(train_index), len(val_index), list(data.classes), device)
        log.info("config: %s", config.to_dict())
        log.info("%s", describe_augmentation(config.data, bool(config.flip), config.shift, config.rotation))
    if state["finished"]:
        log.info("%s has already finished (%d epochs); nothing to do", out, state["epoch"])
        _plot(out, state["history"], config)
        return

    from torch.utils.tensorboard import SummaryWriter

    # purge_step drops events a killed run logged after its last checkpoint, so none appear twice.
    writer = SummaryWriter(str(out / runfiles.TENSORBOARD_DIR), purge_step=state["epoch"] + 1 if state["epoch"] else None)
    bar = _ProgressBar(config.epochs, steps, enabled=progress)
    try:
        with bar:
            for epoch in range(state["epoch"], config.epochs):
                t0 = time.perf_counter()
                bar.start_epoch(epoch + 1)
                train_loss, train_acc, lr = _train_epoch(model, opt, sched, train_x, train_y, config, augment,
                                                         shuffle_gen, augment_gen, memory_format, bar)
                val_loss, val_acc = _evaluate(model, val_x, val_y, config.label_smoothing, memory_format)
                row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                       "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - t0}
                state["history"].append(row)
                state["epoch"] = epoch + 1
                if val_acc > state["best_val_acc"]:
                    state.update(best_val_acc=val_acc, best_epoch=epoch + 1, epochs_without_improvement=0)
                else:
                    state["epochs_without_improvement"] += 1
                stop_early = bool(config.patience) and state["epochs_without_improvement"] >= config.patience
                state["finished"] = stop_early or epoch + 1 == config.epochs
                try:
                    if state["best_epoch"] == epoch + 1:
                        runfiles.save_weights(out / runfiles.WEIGHTS_FILE, model)
                    runfiles.write_history(out, state["history"])
                    for key in ("loss", "acc"):
                        writer.add_scalars(key, {"train": row[f"train_{key}"], "val": row[f"val_{key}"]}, epoch + 1)
                    writer.add_scalar("lr", lr, epoch + 1)
                    writer.flush()
                    # The checkpoint goes last: it is the commit point a resumed run starts from.
                    runfiles.save_checkpoint(ckpt_path, _checkpoint(state, model, opt, sched, shuffle_gen, augment_gen,
                                                                    config, device))
                except _atomic.CannotWrite as err:
                    if err.disk_full:
                        raise runfiles.disk_full(Path(err.filename), err) from None
                    raise
                bar.end_epoch(row, best=state["best_epoch"] == epoch + 1)
                log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.3g | %.1f s%s",
                         epoch + 1, config.epochs, train_loss, train_acc, val_loss, val_acc, lr, row["seconds"],
                         " (best)" if state["best_epoch"] == epoch + 1 else "")
                if stop_early:
                    log.info("early stopping: no better validation accuracy for %d epochs", config.patience)
                    break
    except BaseException:
        # Ctrl-C or an error: still draw what was completed, without hiding the original exception.
        with contextlib.suppress(Exception):
            _plot(out, state["history"], config)
        raise
    finally:
        writer.close()
    # Drawn once per session rather than per epoch (a figure costs ~0.3 s); TensorBoard shows curves live.
    _plot(out, state["history"], config)
    log.info("done: best validation accuracy %.4f at epoch %d; %.1f s in this session",
             state["best_val_acc"], state["best_epoch"], time.perf_counter() - started)


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, images: torch.Tensor, labels: torch.Tensor,
                 config: TrainConfig, augment: Augment, shuffle_gen: torch.Generator, augment_gen: torch.Generator,
                 memory_format: torch.memory_format, bar: _ProgressBar) -> tuple[float, float, float]:
    """One pass over the training images; returns (mean loss, accuracy on the augmented batches, last lr)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    lr = opt.param_groups[0]["lr"]
    for index in _batches(torch.randperm(len(labels), generator=shuffle_gen), config.batch_size):
        index = index.to(images.device)
        x = augment(images[index].float().div_(255.0), augment_gen).contiguous(memory_format=memory_format)
        y = labels[index]
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at step {seen // config.batch_size + 1} "
                                     f"with lr={lr:.3g}; lower --lr (the run folder keeps the last good epoch)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        n = len(index)
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == y).sum())
        seen += n
        bar.step(total_loss / seen, correct / seen)
    return total_loss / seen, correct / seen, lr


@torch.no_grad()
def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
              memory_format: torch.memory_format) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode, without augmentation; the loss uses the training criterion so
    the two curves are comparable."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        x = images[start : start + EVAL_BATCH_SIZE].float().div_(255.0).contiguous(memory_format=memory_format)
        y = labels[start : start + EVAL_BATCH_SIZE]
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    return total_loss / len(labels), correct / len(labels)


def _plot(out: Path, history: list[dict[str, float]], config: TrainConfig) -> None:
    if history:
        plot_curves(history, out / runfiles.CURVES_FILE, title=f"{config.model} on {config.data}")


# ------------------------------------------------------------------------------------------ checkpoints

def _checkpoint(state: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                shuffle_gen: torch.Generator, augment_gen: torch.Generator, config: TrainConfig,
                device: torch.device) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state(), "shuffle": shuffle_gen.get_state(), "augment": augment_gen.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "version": runfiles.RUN_VERSION,
        **state,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else {},
        "rng": rng,
        "train": config.to_dict(),
    }


def _restore(ckpt: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
             shuffle_gen: torch.Generator, augment_gen: torch.Generator, device: torch.device, source: str) -> None:
    runfiles.check_state_dict(model, ckpt["model"], source)
    model.load_state_dict(ckpt["model"])
    try:
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None:
            sched.load_state_dict(ckpt["scheduler"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        shuffle_gen.set_state(rng["shuffle"])
        augment_gen.set_state(rng["augment"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{source}: optimiser, schedule or random state does not fit this run ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt["history"], list) or len(ckpt["history"]) != ckpt["epoch"]:
        raise ValueError(f"{source}: history has {len(ckpt['history']) if isinstance(ckpt['history'], list) else '?'} "
                         f"rows for {ckpt['epoch']} completed epochs")


# ---------------------------------------------------------------------------------------------- progress

class _ProgressBar:
    """One progress line per epoch: batches done, live loss and accuracy, then the validation result.

    On a terminal the line is a live rich bar; elsewhere (a CI log, a pipe) each epoch prints one plain
    line when it ends, because a live display cannot redraw there.
    """

    def __init__(self, epochs: int, steps: int, *, enabled: bool) -> None:
        self.epochs, self.steps = epochs, steps
        self.progress = None
        self.console = None
        self.task = None
        if enabled:
            from rich.console import Console

            self.console = Console()
            if self.console.is_terminal:
                self.progress = progress_bar(
                    "epoch {task.fields[epoch]:>3}/{task.fields[epochs]}", bar_width=24,
                    fields=("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:6.1%}", "{task.fields[val]}"),
                    console=self.console)

    def __enter__(self) -> _ProgressBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.progress is not None:
            self.task = self.progress.add_task("", total=self.steps, epoch=epoch, epochs=self.epochs,
                                               loss=math.nan, acc=math.nan, val="")

    def step(self, loss: float, acc: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=loss, acc=acc)

    def end_epoch(self, row: dict[str, float], *, best: bool) -> None:
        val = f"| val loss {row['val_loss']:.3f}  acc {row['val_acc']:6.1%}{'  best' if best else ''}"
        if self.progress is not None:
            self.progress.update(self.task, val=val)
            self.progress.stop_task(self.task)
        elif self.console is not None:
            self.console.print(f"epoch {row['epoch']:>3}/{self.epochs}  loss {row['train_loss']:.3f}  "
                               f"acc {row['train_acc']:6.1%}  {val}  {row['seconds']:.1f} s", highlight=False)
