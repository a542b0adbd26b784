# Copyright 2026 The evl_hf authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Training that survives preemption, for a script built on the Trainer (run_video_classification.py uses it):

- [`AtomicCheckpointsMixin`]: a checkpoint folder is written under `tmp-checkpoints/` and moved into the output folder
  once every process has finished writing it, so a kill at any moment leaves either a complete `checkpoint-N` or none;
- [`FinishedRunMixin`]: a run resumed from a checkpoint at `max_steps` (a finished run, started again by a wrapper that
  always passes `--resume_from_checkpoint last`) trains no step;
- [`last_complete_checkpoint`]: what `--resume_from_checkpoint last` resumes from, skipping (with a warning) folders
  the Trainer could not resume from, such as ones left by runs without the mixin;
- [`PreemptionCallback`]: on SIGTERM the current optimisation step finishes, a checkpoint is saved at it and training
  stops, at the same step on every process;
- [`process_group_destroyed_at_exit`]: the exit of a finished, stopped or failed run is clean on every process.
"""

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import threading
import zipfile
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from evl_hf.utils_io import disk_full_error


logger = logging.getLogger(__name__)

STAGING_DIR = "tmp-checkpoints"  # inside --output_dir; not a `checkpoint-N` name, so the Trainer never resumes from it
PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM: not finished


class AtomicCheckpointsMixin:
    """Mix into a `Trainer` subclass (before `Trainer`) to make its checkpoints complete-or-absent."""

    _staging_dir = None

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = os.path.join(run_dir, STAGING_DIR), os.path.join(run_dir, name)
        if self.args.should_save:  # anything already there was left by a run killed while saving
            shutil.rmtree(staging, ignore_errors=True)
        # Every process writes its own RNG state into the folder: all of them start after the clean-up and finish
        # before the folder is moved.
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:
            # torch.save loses the system's reason: look at the folder while it still holds what was written
            full = disk_full_error(error, staging)
            if self.args.should_save:  # a folder `last` never picks, removed to give the space back
                shutil.rmtree(staging, ignore_errors=True)
            if full is not None and full.__traceback__ is None:  # made from what the folder holds
                raise full from error
            raise
        finally:
            self._staging_dir = None
        if self.state.best_model_checkpoint == os.path.join(staging, name):
            # the best checkpoint is this one: record where it ends up, in the state saved with it too
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging, name, "trainer_state.json"))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            shutil.rmtree(final, ignore_errors=True)  # the same step saved again, by a run resumed from before it
            os.replace(os.path.join(staging, name), final)
            if not os.listdir(staging):
                os.rmdir(staging)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial):
        # While a checkpoint is being written, the Trainer's own saving code writes under the staging folder.
        return self._staging_dir or super()._get_output_dir(trial)


class FinishedRunMixin:
    """
    Mix into a `Trainer` subclass (before `Trainer`) so that resuming a run that reached `max_steps` trains no step.

    The Trainer resumes in epoch `global_step // steps_per_epoch` and checks `max_steps` only after each step. When
    `max_steps` is no multiple of the epoch's steps, and always for a dataset without a length (a stream, whose
    "epoch" the Trainer counts as `max_steps` steps), a finished run resumes inside an epoch it has not finished and
    trains one step past `max_steps` before it stops, overwriting the model with another one.
    """

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs):
        epochs_trained, steps_trained_in_current_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs
        )
        if self.state.global_step >= max_steps:
            logger.warning(
                f"The checkpoint is at step {self.state.global_step} of --max_steps {max_steps}: training is "
                "finished, no step is trained."
            )
            return num_train_epochs, 0  # the Trainer's loop then starts no epoch
        return epochs_trained, steps_trained_in_current_epoch


def _safetensors_problem(path: Path) -> str | None:
    """Whether the safetensors file `path` is missing or shorter than its header says (written only in part)."""
    try:
        with open(path, "rb") as file:
            header_size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(header_size))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        if path.stat().st_size < 8 + header_size + end:
            return f"{path.name} is truncated"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path.name} is missing or unreadable"
    return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """
    Why the Trainer could not resume from the checkpoint `folder`, or `None` when it can: a file it needs (the trainer
    state, the weights, the optimizer, scheduler and RNG states) that is missing, unreadable or cut short. Of FSDP's
    sharded and DeepSpeed's checkpoints, written in their own layouts, only the trainer and RNG states are checked.
    """
    folder = Path(folder)
    try:
        json.loads((folder / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"trainer_state.json is missing or unreadable ({type(error).__name__})"
    shards, states = ["model.safetensors"], ["optimizer.pt", "scheduler.pt"]
    if any(folder.glob("pytorch_model_fsdp*")) or (folder / "latest").is_file():  # FSDP's or DeepSpeed's layout
        shards, states = [], []
    elif (index := folder / "model.safetensors.index.json").is_file():  # weights in shards
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as error:
            return f"{index.name} is unreadable ({type(error).__name__})"
    for shard in shards:
        if (problem := _safetensors_problem(folder / shard)) is not None:
            return problem
    rng_states = sorted(path.name for path in folder.glob("rng_state*.pth")) or ["rng_state.pth"]
    for name in [*states, *rng_states]:
        try:
            # torch.save writes zip archives whose index is at the end: one written in part does not open.
            with zipfile.ZipFile(folder / name):
                pass
        except (OSError, zipfile.BadZipFile):
            return f"{name} is missing or truncated"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` of `output_dir` the Trainer can resume from, warning about each one it skips; `None`
    (with a warning) when there is none."""
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    folders = [path for path in Path(output_dir).glob(f"{prefix}*") if path.name[len(prefix) :].isdigit()]
    for folder in sorted(folders, key=lambda path: int(path.name[len(prefix) :]), reverse=True):
        if (problem := checkpoint_problem(folder)) is None:
            return str(folder)
        logger.warning(f"Skipping incomplete checkpoint {folder}: {problem}.")
    logger.warning(f"No complete checkpoint in {output_dir}: training starts from scratch.")
    return None


def resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """What `--resume_from_checkpoint` names: "last" or "true" mean the newest complete checkpoint in `output_dir`."""
    if str(resume_from_checkpoint).lower() in ("true", "last"):
        return last_complete_checkpoint(output_dir)
    return resume_from_checkpoint


def _ignore_sigterm(worker_init_fn, worker_id: int):
    """
    A DataLoader worker's start: torch makes its workers die on a SIGTERM that does not come from their parent, which
    SLURM and `kill -- -PGID` send to every process of the group; the main process would then fail on the lost worker
    instead of saving. The workers still end with the main process, which stops them or whose exit they notice.
    Forked with SIGTERM blocked (`PreemptionCallback.on_epoch_begin`), they cannot get it before they ignore it.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if worker_init_fn is not None:
        worker_init_fn(worker_id)


class PreemptionCallback(TrainerCallback):
    """
    On SIGTERM (what SLURM, Kubernetes and spot instances send before they take the machine back), finish the current
    optimisation step, save a checkpoint at it and stop training; `stopped_at_step` then says where.

    With several processes, a one-element all-reduce per step lets every process stop at the same step even when the
    signal reaches them at different steps. It runs on the CPU over a gloo group of its own, so that it never waits for
    a GPU to finish its queued work.
    """

    def __init__(self):
        self.requested = False
        self.stopped_at_step = None
        self._previous_handler, self._group, self._workers = signal.SIG_DFL, None, False

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # the only thread Python lets set a handler
            self._previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        else:
            logger.warning("Training runs outside the main thread: SIGTERM will end it without a checkpoint.")
        dataloader = kwargs.get("train_dataloader")
        if dataloader is not None and dataloader.num_workers > 0:
            dataloader.worker_init_fn = functools.partial(_ignore_sigterm, dataloader.worker_init_fn)
            self._workers = threading.current_thread() is threading.main_thread()

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self._workers:  # the epoch's DataLoader workers are forked next: blocked there until they ignore it
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def on_step_begin(self, args, state, control, **kwargs):
        if self._workers:  # a SIGTERM that came meanwhile is delivered now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if args.world_size > 1 and self._group is None:  # every process gets here: creating a group is collective
            self._group = torch.distributed.new_group(backend="gloo")

    def _request_stop(self, signum, frame):
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.requested
        if args.world_size > 1:
            flag = torch.tensor(float(stop))
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
            stop = bool(flag.item())
        if stop:
            control.should_save = control.should_training_stop = True
            self.stopped_at_step = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            signal.signal(signal.SIGTERM, self._previous_handler)

    def exit_if_stopped(self, output_dir: str):
        """After `Trainer.train`: when SIGTERM stopped it, says where and exits with `PREEMPTED_EXIT_STATUS`."""
        if self.stopped_at_step is not None:
            checkpoint = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.stopped_at_step}")
            logger.warning(
                f"Stopped by SIGTERM at step {self.stopped_at_step}, saved in {checkpoint}: the run is not "
                "finished; to continue, run again with the same arguments and "
                "--resume_from_checkpoint last."
            )
            raise SystemExit(PREEMPTED_EXIT_STATUS)


@contextlib.contextmanager
def process_group_destroyed_at_exit():
    """
    Destroys torch.distributed's process group when the block ends, however it ends. A gloo group left for the
    interpreter's shutdown can abort the process (SIGABRT, "terminate called without an active exception") after
    the work is done, which a launcher reports as a failed run.
    """
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
