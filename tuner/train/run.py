"""A training run: a generator of typed events that the CLI and the studio render.

    for event in train(config, stop=threading.Event()):
        ...  # RunStarted, Message, StageStarted, Progress, EpochEnd, CheckpointSaved, Finished

After every epoch `last.pt` is written (and `best.pt` when validation improved), atomically, with
`history.csv` beside them; `metrics.json` is written when the run ends (completed, stopped or
early-stopped). A stop request is honoured between two batches: the run writes `last.pt` at that exact
point (epoch and batch), so `resume=True` continues where it stopped, and on a CPU with a fixed seed
an interrupted-then-resumed run matches an uninterrupted one.

A run is a session (`session.py`: the model, optimizer, loaders), the loop over it (`loop.py`) and
its files (`checkpointing.py`). Under torchrun every rank runs the loop; rank 0 alone writes files,
and the metrics in the events are reduced over all ranks so every rank agrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import torch.distributed as dist

from ..config import TrainConfig
from ..data.discover import DatasetSpec, dataset_folder, prepare_dataset
from ..data.health import exclude_samples, normalised_exclusions
from ..errors import TunerError
from ..events import Event, Finished, Message, RunStarted
from ..model.weights import WeightsSource, resolve_weights
from ..runtime.setup import Runtime, end_process_group, setup_runtime, world_from_env
from .checkpointing import RunFolder, Start, hold_run_lock, previous_run, restore
from .loop import Loop, StopSignal, stop_check
from .policies import BestEpoch
from .schedule import lr_scheduler
from .session import build_session, check_batch_split

# Settings that may differ when resuming (how long, and on what machine); everything else comes from
# the checkpoint, so a resumed run is the same run.
RESUME_OVERRIDABLE = ("epochs", "early_stopping", "device", "num_workers", "out", "data", "cache_dir", "amp",
                      "channels_last", "compile")


def train(config: TrainConfig, stop: StopSignal | None = None, resume: bool = False,
          spec: DatasetSpec | None = None, overwrite: bool = False,
          given: set[str] | None = None) -> Iterator[Event]:
    """Train as `config` says, yielding events; see the module docstring.

    With resume=True the run's saved settings apply; `given` names the settings the caller set on
    purpose (the CLI passes the flags typed), and only those may override the saved ones. None means
    every field of `config` was set on purpose (API callers that pass a complete config).
    """
    asked = config.validate()
    out = Path(asked.out)
    lock = hold_run_lock(out) if world_from_env()[0] == 0 else None
    runtime = None
    finished_cleanly = False
    try:
        saved, replaces_run = previous_run(out, resume, overwrite)
        config, ignored = merge_resume_config(saved.get("config", {}), asked, given) if saved else (asked, [])
        runtime = setup_runtime(config)
        yield from _events(config, runtime, spec, saved, RunFolder(out, runtime, replaces_run),
                           stop_check(stop, runtime), {name: asked.to_dict()[name] for name in ignored})
        finished_cleanly = True
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock (so does the process ending)
        if runtime is not None:
            end_process_group(runtime, finished_cleanly)


def run_to_end(config: TrainConfig, **kwargs: Any) -> Finished:
    """Consume `train()` and return its Finished event (for scripts and tests)."""
    last = None
    for event in train(config, **kwargs):
        last = event
    assert isinstance(last, Finished)
    return last


def merge_resume_config(saved: dict[str, Any], asked: TrainConfig,
                        given: set[str] | None = None) -> tuple[TrainConfig, list[str]]:
    """The checkpoint's config, with the few settings that may change on resume taken from `asked`.

    Returns the merged config and the settings the caller gave that were ignored because they would
    make it a different run.
    """
    config = TrainConfig.from_dict(saved)
    # Compared with the loaded config, not the saved dict: a setting newer than the checkpoint has its
    # default there (an old run excluded nothing), and asking for that default changes nothing.
    saved_values = config.to_dict()
    asked_values = asked.to_dict()
    given = set(asked_values) if given is None else set(given)
    ignored = []
    for name in sorted(given):
        value = asked_values[name]
        if name in RESUME_OVERRIDABLE:
            setattr(config, name, value)
        elif value != saved_values[name]:
            ignored.append(name)
    return config.validate(), ignored


def _events(config: TrainConfig, runtime: Runtime, spec: DatasetSpec | None, saved: dict[str, Any] | None,
            folder: RunFolder, stop_requested: Callable[[], bool], ignored: dict[str, Any]) -> Iterator[Event]:
    spec = _dataset_on_all_ranks(config, folder.out, runtime) if spec is None else exclude_samples(spec, config.exclude)
    if saved and list(saved["classes"]) != spec.classes:
        raise TunerError(f"The dataset's classes ({', '.join(spec.classes)}) differ from the checkpoint's "
                         f"({', '.join(saved['classes'])}): resume with the data the run started with.")
    check_batch_split(config, runtime)  # before the weights are looked up (maybe downloaded)
    if saved:
        session = build_session(config, spec, WeightsSource(**saved["weights_source"]), runtime,
                                model_state=saved["model_state"],
                                batchnorm_measured=bool(saved.get("batchnorm_measured", True)))
    else:
        session = build_session(config, spec, _weights_on_all_ranks(config, runtime), runtime)
    scheduler = lr_scheduler(session.optimizer, config, session.steps_per_epoch)
    best = BestEpoch(config.early_stopping)
    start = restore(saved, session, scheduler, best) if saved else Start()
    loop = Loop(session, scheduler, folder, stop_requested, start, best)

    source = session.source
    yield RunStarted(str(folder.out), spec.classes, len(spec.train), len(spec.val), runtime.describe(),
                     source.to_dict(), "resumed from last.pt" if saved else session.weights_report, start.epoch,
                     start.next_batch, config.epochs, runtime.rank, runtime.world_size)
    if not source.pretrained and not saved:  # a resume continues from trained weights: no warning
        yield Message("warning", source.message)
    if runtime.gpu_note:
        yield Message("warning", f"Training on the CPU: {runtime.gpu_note}.")
    for text in spec.warnings:
        yield Message("warning", text)
    if config.exclude:
        yield Message("info", left_out_text(config, spec))
    if ignored:
        yield Message("warning", "Resuming keeps the run's own settings, so these were ignored: "
                      + ", ".join(f"{name}={value!r}" for name, value in ignored.items())
                      + ". On resume only how long and where the run trains may change (epochs, early "
                      "stopping, device, workers, precision, paths); start a new run to change the others.")
    if start.epoch >= config.epochs:
        yield Message("info", f"The run has finished all {config.epochs} epochs already: raise epochs to "
                      "train longer.")
        yield loop.finish("completed", start.epoch)
        return
    yield from loop.run()


def left_out_text(config: TrainConfig, spec: DatasetSpec) -> str:
    """The log line of a run with exclusions. `exclude_samples` refused any path that is not one of the
    dataset's images, so each distinct path left exactly one out."""
    return (f"Left out {len(normalised_exclusions(config.exclude))} image(s) on the exclude list: training on "
            f"{len(spec.train)} and validating on {len(spec.val)}.")


def _dataset_on_all_ranks(config: TrainConfig, out: Path, runtime: Runtime) -> DatasetSpec:
    """One process discovers and validates the dataset, less the config's exclusions; under torchrun
    rank 0 does it and sends the result, so every rank trains on the identical sample list (a second
    look could differ, and ranks with different step counts would hang). Other nodes only materialise
    the demo data or an unpacked zip at the same path, which the sample list refers to."""
    if not runtime.distributed:
        return _dataset(config, out)
    if runtime.is_main:
        box: list[Any] = [_dataset(config, out)]
    else:
        if runtime.local_rank == 0:
            dataset_folder(config.data, out)
        box = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _dataset(config: TrainConfig, out: Path) -> DatasetSpec:
    return exclude_samples(prepare_dataset(config.data, out, config.val_ratio, config.seed), config.exclude)


def _weights_on_all_ranks(config: TrainConfig, runtime: Runtime) -> WeightsSource:
    """Rank 0 resolves (and maybe downloads) the weights; the others wait and use its answer."""
    if not runtime.distributed:
        return resolve_weights(config.weights)
    box = [resolve_weights(config.weights).to_dict() if runtime.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return WeightsSource(**box[0])
