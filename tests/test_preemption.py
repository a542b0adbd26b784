"""Preemption: complete-or-absent checkpoints, `--resume_from_checkpoint last` past incomplete ones, SIGTERM handling
(examples/preemption.py, used by examples/run_video_classification.py), with real runs, processes and signals."""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Importing it puts examples/ on sys.path; its tiny CLIP and video fixtures are used here too.
from training_utils import (
    ENVIRONMENT,
    SCRIPT,
    descendants,
    logged_steps,
    run_video_classification,
    start,
    wait_for,
)
from transformers import Trainer, TrainerCallback, TrainingArguments

from evl_hf.testing_utils import limited_file_size


# isort: split
from preemption import STAGING_DIR, FinishedRunMixin, checkpoint_problem, last_complete_checkpoint  # examples/


ROOT = SCRIPT.parents[1]
# 8 training clips in batches of 2: 4 steps an epoch; a checkpoint every 2 steps.
TRAIN_ARGS = (
    "--num_frames 4 --frame_stride 2 --decoder_num_layers 2 --learning_rate 1e-3 --per_device_train_batch_size 2 "
    "--logging_steps 1 --do_train --disable_tqdm True --report_to none --seed 7"
)


def script_args(tiny_clip, videos, output_dir, extra=""):
    return (
        f"--model_name_or_path {tiny_clip} --train_dir {videos / 'train'} --output_dir {output_dir} "
        f"--cache_dir {output_dir.parent / 'cache'} {TRAIN_ARGS} {extra}"
    ).split()


def final_step_and_loss(output_dir: Path):
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return state["global_step"], [entry for entry in state["log_history"] if "loss" in entry][-1]["loss"]


def assert_same_weights(output_dir: Path, reference: Path):
    weights, expected = load_file(output_dir / "model.safetensors"), load_file(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], atol=1e-6, rtol=0, msg=name)


ARGS_4_STEPS = "--max_steps 4 --save_strategy steps --save_steps 2 --dataloader_num_workers 0"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_clip, videos) -> Path:
    """The output folder of a 4-step run saving checkpoints at steps 2 and 4."""
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "output"
    run_video_classification.main(script_args(tiny_clip, videos, output_dir, ARGS_4_STEPS))
    return output_dir


# ---- Checkpoints -----------------------------------------------------------------------------------------------


def test_a_finished_run_leaves_complete_checkpoints_and_no_staging_folder(uninterrupted):
    assert sorted(path.name for path in uninterrupted.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert checkpoint_problem(uninterrupted / "checkpoint-2") is None
    assert checkpoint_problem(uninterrupted / "checkpoint-4") is None
    assert not (uninterrupted / STAGING_DIR).exists()


def test_the_best_checkpoint_is_recorded_where_it_ends_up(tmp_path, tiny_clip, videos):
    output_dir = tmp_path / "output"
    args = (
        f"{ARGS_4_STEPS} --do_eval --validation_dir {videos / 'validation'} --per_device_eval_batch_size 4 "
        "--eval_strategy steps --eval_steps 2 --load_best_model_at_end --metric_for_best_model loss "
        "--save_total_limit 1"
    )
    run_video_classification.main(script_args(tiny_clip, videos, output_dir, args))
    best = json.loads((output_dir / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert Path(best).parent == output_dir and Path(best).is_dir()  # not under the staging folder; kept by rotation
    saved_with_it = json.loads((Path(best) / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert saved_with_it == best


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("delete trainer_state.json", "trainer_state.json is missing"),
        ("truncate trainer_state.json", "trainer_state.json is missing or unreadable"),
        ("delete model.safetensors", "model.safetensors is missing"),
        ("truncate model.safetensors", "model.safetensors is truncated"),
        ("truncate optimizer.pt", "optimizer.pt is missing or truncated"),
        ("delete scheduler.pt", "scheduler.pt is missing or truncated"),
        ("truncate rng_state.pth", "rng_state.pth is missing or truncated"),
    ],
)
def test_checkpoint_problem_names_the_missing_or_cut_short_file(uninterrupted, tmp_path, damage, problem):
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(uninterrupted / "checkpoint-2", folder)
    action, name = damage.split()
    if action == "delete":
        (folder / name).unlink()
    else:  # what a kill while the file is written leaves
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    assert problem in checkpoint_problem(folder)


def test_sharded_weights_are_checked_through_their_index(uninterrupted, tmp_path):
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(uninterrupted / "checkpoint-2", folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert checkpoint_problem(folder) == "model-00002-of-00002.safetensors is missing or unreadable"


def test_no_checkpoint_folder_means_none(tmp_path, caplog):
    (tmp_path / "checkpoint-best").mkdir()  # not a step: never a candidate
    assert last_complete_checkpoint(tmp_path) is None
    assert "No complete checkpoint" in caplog.text


# ---- Resuming --------------------------------------------------------------------------------------------------


def test_resume_last_skips_incomplete_checkpoints_and_ends_like_an_uninterrupted_run(
    uninterrupted, tmp_path, tiny_clip, videos, caplog
):
    # What killed runs without complete-or-absent checkpoints leave: checkpoint-4 without its trainer state,
    # checkpoint-3 with an optimizer state written in part; checkpoint-2 is complete.
    output_dir = tmp_path / "output"
    for step, source in [(2, 2), (3, 2), (4, 4)]:
        shutil.copytree(uninterrupted / f"checkpoint-{source}", output_dir / f"checkpoint-{step}")
    (output_dir / "checkpoint-4" / "trainer_state.json").unlink()
    optimizer = output_dir / "checkpoint-3" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    resumed_from = (output_dir / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns

    args = script_args(tiny_clip, videos, output_dir, f"{ARGS_4_STEPS} --resume_from_checkpoint last")
    run_video_classification.main(args)
    assert re.search(r"Skipping incomplete checkpoint \S*checkpoint-4: trainer_state.json is missing", caplog.text)
    assert re.search(r"Skipping incomplete checkpoint \S*checkpoint-3: optimizer.pt is missing", caplog.text)
    # resumed from checkpoint-2, not from scratch: that one was not saved again
    assert (output_dir / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == resumed_from
    step, loss = final_step_and_loss(output_dir)
    expected_step, expected_loss = final_step_and_loss(uninterrupted)
    assert step == expected_step == 4 and loss == pytest.approx(expected_loss, abs=1e-6)
    assert_same_weights(output_dir, uninterrupted)
    assert checkpoint_problem(output_dir / "checkpoint-4") is None  # saved again, complete this time


def test_without_a_complete_checkpoint_training_starts_from_scratch(
    uninterrupted, tmp_path, tiny_clip, videos, caplog
):
    output_dir = tmp_path / "output"
    shutil.copytree(uninterrupted / "checkpoint-2", output_dir / "checkpoint-2")
    (output_dir / "checkpoint-2" / "model.safetensors").unlink()

    args = script_args(tiny_clip, videos, output_dir, f"{ARGS_4_STEPS} --resume_from_checkpoint true")
    run_video_classification.main(args)
    assert "Skipping incomplete checkpoint" in caplog.text and "model.safetensors is missing" in caplog.text
    assert f"No complete checkpoint in {output_dir}: training starts from scratch" in caplog.text
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert final_step_and_loss(output_dir)[1] == pytest.approx(final_step_and_loss(uninterrupted)[1], abs=1e-6)


# ---- Rerunning a finished run -------------------------------------------------------------------------------


class Offset(torch.nn.Module):
    """One weight fitted to the rows' `x`: the smallest model the Trainer trains and saves."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, labels=None):
        return {"loss": ((self.weight - x) ** 2).mean()}


class CountedRows(torch.utils.data.Dataset):
    """10 rows, counting those read."""

    def __init__(self):
        self.read = 0

    def __len__(self):
        return 10

    def __getitem__(self, index):
        self.read += 1
        return {"x": torch.tensor([float(index)])}


class CountedStream(torch.utils.data.IterableDataset):
    """The same rows as a stream, which has no length."""

    def __init__(self):
        self.rows = CountedRows()

    def __iter__(self):
        return (self.rows[index] for index in range(len(self.rows)))


class CountSteps(TrainerCallback):
    def __init__(self):
        self.epochs = self.steps = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epochs += 1

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps += 1


class FinishedRunTrainer(FinishedRunMixin, Trainer):
    pass


@pytest.mark.parametrize("stream", [False, True], ids=["rows", "stream"])
def test_resuming_a_finished_run_starts_no_epoch_and_reads_no_row(tmp_path, stream):
    # 7 steps of 2 rows, 5 steps an epoch: the Trainer resumes a finished run inside the second epoch (the first for a
    # stream, whose epoch it counts as --max_steps steps) and checks max_steps only after a step.
    dataset = CountedStream() if stream else CountedRows()
    rows = dataset.rows if stream else dataset
    args = TrainingArguments(
        tmp_path,
        max_steps=7,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=7,
        report_to="none",
        dataloader_pin_memory=False,
    )
    Trainer(model=Offset(), args=args, train_dataset=dataset).train()
    checkpoint = str(tmp_path / "checkpoint-7")

    rows.read, counter = 0, CountSteps()
    plain = Trainer(model=Offset(), args=args, train_dataset=dataset, callbacks=[counter])
    plain.train(resume_from_checkpoint=checkpoint)
    assert (plain.state.global_step, counter.steps) == (8, 1) and rows.read > 0  # the cause: one step too many

    rows.read, counter = 0, CountSteps()
    trainer = FinishedRunTrainer(model=Offset(), args=args, train_dataset=dataset, callbacks=[counter])
    trainer.train(resume_from_checkpoint=checkpoint)
    assert (trainer.state.global_step, counter.epochs, counter.steps, rows.read) == (7, 0, 0, 0)


def test_a_finished_run_rerun_with_resume_last_keeps_its_model(tmp_path, tiny_clip, videos):
    # 4 steps an epoch: the run ends inside its second epoch, at a checkpoint. A constant learning rate: a step past
    # the end would change the weights (the linear schedule's rate is 0 there).
    output_dir = tmp_path / "output"
    args = "--max_steps 6 --save_strategy steps --save_steps 3 --lr_scheduler_type constant"
    args = script_args(tiny_clip, videos, output_dir, args)
    run_video_classification.main(args)
    saved = (output_dir / "model.safetensors").read_bytes()
    run_video_classification.main([*args, "--resume_from_checkpoint", "last"])
    assert (output_dir / "model.safetensors").read_bytes() == saved
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and max(entry["step"] for entry in state["log_history"]) == 6


# ---- Real processes and signals --------------------------------------------------------------------------------


def rank_process(launcher: int, rank: int) -> int:
    """The id of the training process of `rank` among the descendants of the `launcher` process."""
    for pid in descendants(launcher):  # parents before their children, whose DataLoader workers inherit RANK too
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return pid
    raise LookupError(f"no process of rank {rank} under {launcher}")


def stopped_lines(text: str) -> list[int]:
    return [int(step) for step in re.findall(r"Stopped by SIGTERM at step (\d+), saved in", text)]


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_a_checkpoint_and_exits_143(tmp_path, tiny_clip, videos):
    output_dir, log = tmp_path / "output", tmp_path / "log.txt"
    # No periodic checkpoints: the only one is the one SIGTERM makes. One DataLoader worker gets the signal too.
    args = script_args(tiny_clip, videos, output_dir, "--max_steps 2000 --save_strategy no --dataloader_num_workers 1")
    process = start([sys.executable, str(SCRIPT), *args], log)
    assert wait_for(lambda: logged_steps(log) >= 2, process), log.read_text()[-3000:]
    assert wait_for(lambda: descendants(process.pid), process, interval=0.001)  # each epoch has its own worker
    os.kill(descendants(process.pid)[0], signal.SIGTERM)  # the DataLoader worker first: it must not die of it
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)  # then the whole group, as SLURM does
    assert process.wait(timeout=120) == 143, log.read_text()[-3000:]

    text = log.read_text()
    (step,) = stopped_lines(text)
    assert 2 <= step < 2000
    assert f"saved in {output_dir / f'checkpoint-{step}'}" in text and "--resume_from_checkpoint last" in text
    assert [path.name for path in output_dir.glob("checkpoint-*")] == [f"checkpoint-{step}"]
    assert checkpoint_problem(output_dir / f"checkpoint-{step}") is None
    assert json.loads((output_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())["global_step"] == step
    assert not (output_dir / STAGING_DIR).exists()
    assert not (output_dir / "model.safetensors").exists() and "eval_results.json" not in text  # no final save


@pytest.mark.slow
def test_a_run_killed_again_and_again_ends_like_an_uninterrupted_one(tmp_path, tiny_clip, videos):
    args = "--max_steps 60 --save_strategy steps --save_steps 4 --dataloader_num_workers 1"
    reference, log = tmp_path / "reference", tmp_path / "reference.txt"
    process = start([sys.executable, str(SCRIPT), *script_args(tiny_clip, videos, reference, args)], log)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]

    output_dir, rng = tmp_path / "output", random.Random(0)
    staging = output_dir / STAGING_DIR
    resume = [sys.executable, str(SCRIPT), *script_args(tiny_clip, videos, output_dir, args)]
    resume += ["--resume_from_checkpoint", "last"]
    kills, finished = [], False  # (signal, whether a checkpoint was being written, exit status) per kill
    for attempt in range(10):
        log = tmp_path / f"attempt-{attempt}.txt"
        process = start(resume, log)
        if attempt in (0, 3):  # SIGKILL while a checkpoint is written: as soon as its staging folder appears
            how, ready = signal.SIGKILL, wait_for(lambda: any(staging.glob("checkpoint-*")), process, interval=0.002)
        else:  # SIGKILL or SIGTERM in turn, at a random moment once training runs
            # SIGTERM first (attempt 1): on a quiet machine the tiny run ends within seconds of its first step
            how, ready = [signal.SIGKILL, signal.SIGTERM][attempt % 2], wait_for(lambda: logged_steps(log), process)
            time.sleep(rng.uniform(0, 0.4))
        if not ready or process.poll() is not None:
            finished = True
            break
        if how == signal.SIGKILL:  # the DataLoader worker too: nothing survives
            os.killpg(process.pid, signal.SIGKILL)
        else:  # the main process only, as Kubernetes signals a container's first process
            process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=120)
        kills.append((how.name, attempt in (0, 3) and any(staging.glob("checkpoint-*")), returncode))
        if returncode == 0:  # it finished before the signal came
            finished = True
            break
        # SIGTERM after training, during the final save and evaluation, ends the process at once (default handling)
        finished_training = "train_runtime" in log.read_text()
        assert returncode in (-signal.SIGKILL, 143, *[-signal.SIGTERM] * finished_training), log.read_text()[-3000:]
        if returncode == 143:
            assert len(stopped_lines(log.read_text())) == 1
    if not finished:
        process = start(resume, log := tmp_path / "last-attempt.txt")
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    print("kills (signal, during a save, exit status):", kills)

    assert any(name == "SIGKILL" and during_save for name, during_save, _ in kills), kills
    assert any(name == "SIGKILL" and not during_save for name, during_save, _ in kills), kills
    assert any(name == "SIGTERM" and code == 143 for name, _, code in kills), kills
    step, loss = final_step_and_loss(output_dir)
    assert (step, loss) == (60, pytest.approx(final_step_and_loss(reference)[1], abs=1e-6)), kills
    assert_same_weights(output_dir, reference)
    assert not staging.exists()


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_on_sigterm(tmp_path, tiny_clip, videos):
    output_dir, log = tmp_path / "output", tmp_path / "log.txt"
    args = script_args(tiny_clip, videos, output_dir, "--max_steps 30 --save_strategy no --dataloader_num_workers 1")
    command = f"""
        {sys.executable} -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1
        --mixed_precision no --dynamo_backend no {SCRIPT} --use_cpu True --ddp_timeout 120
    """.split()
    process = start(command + args, log)
    assert wait_for(lambda: logged_steps(log) >= 1, process), log.read_text()[-3000:]
    os.killpg(process.pid, signal.SIGTERM)  # the launcher, both workers and their DataLoader workers
    assert process.wait(timeout=120) != 0

    text = log.read_text()
    steps = stopped_lines(text)
    assert len(steps) == 2 and steps[0] == steps[1], text[-3000:]  # one line per rank
    checkpoint = output_dir / f"checkpoint-{steps[0]}"
    assert [path.name for path in output_dir.glob("checkpoint-*")] == [checkpoint.name]
    assert checkpoint_problem(checkpoint) is None
    assert sorted(path.name for path in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]

    # SIGTERM to rank 1 only: rank 0 learns it through the per-step all-reduce and stops at the same step.
    log, resume = tmp_path / "resumed.txt", command + args + ["--resume_from_checkpoint", "last"]
    process = start(resume, log)
    assert wait_for(lambda: logged_steps(log) >= 1, process), log.read_text()[-3000:]
    os.kill(rank_process(process.pid, rank=1), signal.SIGTERM)
    assert process.wait(timeout=120) != 0
    again = stopped_lines(log.read_text())
    assert len(again) == 2 and again[0] == again[1] > steps[0], log.read_text()[-3000:]
    assert checkpoint_problem(output_dir / f"checkpoint-{again[0]}") is None

    process = start(resume, log := tmp_path / "finished.txt")
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert final_step_and_loss(output_dir)[0] == 30


# ---- A second run, a full disk ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_the_output_dir_stops_at_once_and_a_killed_runs_lock_blocks_nothing(
    tmp_path, tiny_clip, videos
):
    output_dir, log = tmp_path / "output", tmp_path / "first.txt"
    args = script_args(tiny_clip, videos, output_dir, "--save_strategy steps --save_steps 2")
    command = [sys.executable, str(SCRIPT), *args, "--resume_from_checkpoint", "last"]
    first = start([*command, "--max_steps", "5000", "--dataloader_num_workers", "1"], log)
    assert wait_for(lambda: logged_steps(log) >= 1, first), log.read_text()[-3000:]

    second = subprocess.run(
        [*command, "--max_steps", "5000"], capture_output=True, text=True, env=ENVIRONMENT, cwd=ROOT, timeout=300
    )
    assert second.returncode == 1 and first.poll() is None  # the first run goes on
    last_line = second.stderr.strip().splitlines()[-1]
    assert f"--output_dir {output_dir} is in use by process {first.pid} on {socket.gethostname()}" in last_line
    assert "or pass another --output_dir" in last_line
    assert "Running training" not in second.stdout + second.stderr  # stopped before any work

    os.killpg(first.pid, signal.SIGKILL)  # the kernel drops its lock; the lock file stays, naming a dead process
    first.wait(timeout=60)
    assert (output_dir / "_run.lock").exists()
    saved = max(int(path.name.split("-")[1]) for path in output_dir.glob("checkpoint-*"))
    process = start([*command, "--max_steps", str(saved + 2)], log := tmp_path / "resumed.txt")
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert final_step_and_loss(output_dir)[0] == saved + 2 and logged_steps(log) == 2  # resumed, not restarted
    assert not (output_dir / "_run.lock").exists()


@pytest.mark.parametrize("debug", [False, True], ids=["one line", "debug"])
def test_a_full_disk_ends_the_run_with_one_line_and_the_rerun_ends_like_a_straight_run(
    uninterrupted, tmp_path, tiny_clip, videos, debug
):
    # 250 kB: the weights of a checkpoint (235 kB) fit, its optimizer state (300 kB, written by torch.save, which
    # does not say why it failed) does not.
    output_dir = tmp_path / "output"
    command = [sys.executable, str(SCRIPT), *script_args(tiny_clip, videos, output_dir, ARGS_4_STEPS)]
    environment = {**ENVIRONMENT, "TRANSFORMERS_VERBOSITY": "debug" if debug else "warning"}
    full = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=300,
        preexec_fn=limited_file_size(250_000),
    )
    assert full.returncode == 1, full.stderr[-3000:]
    if debug:  # the error itself, with its traceback
        assert "Traceback" in full.stderr and "Disk full" not in full.stderr
        return
    last_line = full.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"Disk full: writing {output_dir / STAGING_DIR / 'checkpoint-2' / 'optimizer.pt'} failed (File too large). "
        "Free space or pass another --output_dir; --resume_from_checkpoint last resumes from the last checkpoint."
    )
    assert "Traceback" not in full.stderr + full.stdout
    assert not list(output_dir.glob("checkpoint-*")) and not (output_dir / STAGING_DIR).exists()

    # here, as the uninterrupted run was: the same number of threads, the same sums
    run_video_classification.main([*command[2:], "--resume_from_checkpoint", "last"])
    assert final_step_and_loss(output_dir) == (4, pytest.approx(final_step_and_loss(uninterrupted)[1], abs=1e-6))
    assert_same_weights(output_dir, uninterrupted)


def test_a_disk_that_fills_during_a_checkpoint_keeps_the_last_one_and_the_rerun_ends_like_a_straight_run(
    uninterrupted, small_disk, tiny_clip, videos, capsys
):
    # checkpoint-2 (about 640 kB) fits, checkpoint-4 does not: torch.save fails with ENOSPC in its optimizer state.
    # In this process, as the uninterrupted run: the same number of threads, the same sums.
    output_dir = small_disk / "output"
    args = script_args(tiny_clip, videos, output_dir, ARGS_4_STEPS)
    with pytest.raises(SystemExit) as exit:
        run_video_classification.main(args)
    assert exit.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"Disk full: writing {output_dir / STAGING_DIR} failed (No space left on device). Free space or pass another "
        "--output_dir; --resume_from_checkpoint last resumes from the last checkpoint."
    )
    assert [path.name for path in output_dir.glob("checkpoint-*")] == ["checkpoint-2"]
    assert checkpoint_problem(output_dir / "checkpoint-2") is None and not (output_dir / STAGING_DIR).exists()

    subprocess.run(["mount", "-o", "remount,size=20m", small_disk], check=True)  # space freed
    run_video_classification.main([*args, "--resume_from_checkpoint", "last"])
    assert final_step_and_loss(output_dir) == (4, pytest.approx(final_step_and_loss(uninterrupted)[1], abs=1e-6))
    assert_same_weights(output_dir, uninterrupted)
