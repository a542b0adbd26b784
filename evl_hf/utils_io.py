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
Writing a run's outputs where another run or a full disk could spoil them, for the training script and the commands:

- [`output_lock`]: one writer per output. An advisory lock (`filelock`, an `flock` on Linux) is held for the life of
  the run; a second run on the same output stops at once with [`OutputInUseError`], naming the process that holds it.
  The kernel releases the lock of a process that dies, so a run killed with SIGKILL leaves no lock behind.
- [`exit_on_full_disk`]: a full disk (`ENOSPC`, `EDQUOT`, or `EFBIG` past a file-size limit) ends the run with one
  line that names the path and says what to do, and exit status 1; the traceback only at debug verbosity.
"""

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout
from transformers.utils import logging as transformers_logging


FOLDER_LOCK_NAME = "_run.lock"  # inside a locked folder: the Trainer leaves `_*` names out of what it uploads
FILE_LOCK_SUFFIX = ".lock"  # beside a locked file
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container.cc", "iostream error")  # torch.save's, without errno


class OutputInUseError(RuntimeError):
    """Another live process holds the lock of the output."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of `output`: `_run.lock` inside it when it is a folder, `<output>.lock` beside it otherwise."""
    output = Path(output)
    return output / FOLDER_LOCK_NAME if output.is_dir() else output.with_name(output.name + FILE_LOCK_SUFFIX)


def _write_owner(fd: int):
    # Read by the runs that find the output locked; nothing depends on it, so a full disk may leave it empty.
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)


def _owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"process {owner['pid']} on {owner['host']} (running since {owner['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, argument: str, *, folder: bool = False):
    """
    Holds the lock of `output` (a folder, which must exist, or a file) while the block runs; the lock file is removed
    at the end. Take it once per run: in a distributed run, on the main process only, before the other processes
    write (they wait for it at a barrier).

    Args:
        output (`str` or `os.PathLike`): the folder or file the run writes.
        argument (`str`): the option that named it (`"--output_dir"`), for the message.
        folder (`bool`, *optional*, defaults to `False`): `output` is a folder: it is made when missing, and removed
            again at the end when the run left it empty (a run refused for a bad argument leaves no folder behind).
            A command locks its output folder with `with output_lock(args.output_dir, "--output_dir", folder=True):`.

    Raises:
        [`OutputInUseError`]: another live process holds it; the message names that process (its pid and host).
    """
    made = folder and not os.path.isdir(output)
    if made:
        os.makedirs(output)
    try:
        with _locked(output, argument):
            yield
    finally:
        if made:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                os.rmdir(output)


@contextlib.contextmanager
def _locked(output: str | os.PathLike, argument: str):
    path = lock_path(output)
    lock = FileLock(path, timeout=0, on_acquired=_write_owner)
    try:
        lock.acquire()
    except Timeout:
        raise OutputInUseError(
            f"{argument} {output} is in use by {_owner(path)}: two runs writing it would mix their outputs. Wait "
            f"for that run to end or stop it, or pass another {argument}."
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # removed while held: a run starting now makes a new one
            path.unlink()
        lock.release()


def disk_full_error(error: BaseException, output: str | os.PathLike | None = None) -> OSError | Exception | None:
    """
    The error in `error`'s chain (`__cause__`, `__context__`) that says a disk or quota is full, or `None`: an
    `OSError` with `ENOSPC`, `EDQUOT` or `EFBIG`, or an error of a writer that gives the system's reason in its
    message only (safetensors' `SafetensorError`, pyarrow's `OSError` without an `errno`).

    `torch.save` loses the reason (`unexpected pos ...`, `iostream error`): for its errors, `output` (the folder or
    file being written) is looked at, and an `OSError` is made when a file under it stopped at the file-size limit
    (`RLIMIT_FSIZE`) or its file system has less than 1 MiB free.
    """
    texts = [os.strerror(number) for number in DISK_FULL_ERRNOS]  # "No space left on device", ...
    seen, opaque = set(), False
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error
        # writers that give the reason in their message only (safetensors, pyarrow's OSError without an errno)
        if not (isinstance(error, OSError) and error.errno) and any(text in str(error) for text in texts):
            return error
        opaque = opaque or any(text in str(error) for text in TORCH_WRITE_ERRORS)
        error = error.__cause__ or error.__context__
    if not opaque or output is None or not os.path.exists(output):
        return None
    import resource  # POSIX only, like the file-size limit

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        output = Path(output)
        for path in [output, *(output.rglob("*") if output.is_dir() else [])]:
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_size >= limit:
                    return OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
    stats = os.statvfs(output)
    if stats.f_bavail * stats.f_frsize < 1 << 20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output))
    return None


@contextlib.contextmanager
def exit_on_full_disk(output: str | os.PathLike | None, argument: str, rerun: str, *, debug: bool = False):
    """
    Ends the process with exit status 1 and one line on stderr when the block fails because a disk is full: the file
    (or, when the error does not name it, `output`), the system's reason, and what to do: free space or pass another
    `argument`, then `rerun`. With `debug`, or at debug verbosity (`TRANSFORMERS_VERBOSITY=debug`, `--log_level
    debug`), the error is raised with its traceback instead. Any other error passes through.

    Args:
        output (`str` or `os.PathLike`, *optional*): the folder or file the run writes (`None`: standard output).
        argument (`str`): the option that named it (`"--output_dir"`).
        rerun (`str`): how a rerun continues, e.g. `"--resume_from_checkpoint last resumes from the last complete
            checkpoint"`.
        debug (`bool`, *optional*, defaults to `False`): raise the error with its traceback (`evl-hf --debug`).
    """
    try:
        yield
    except Exception as error:
        full = disk_full_error(error, output)
        if full is None or debug or transformers_logging.get_verbosity() <= logging.DEBUG:
            raise
        path = getattr(full, "filename", None) or output or "the output"
        reason = os.strerror(full.errno) if getattr(full, "errno", None) else str(full).strip().splitlines()[-1]
        sys.stdout.flush()
        print(
            f"Disk full: writing {path} failed ({reason}). Free space or pass another {argument}; {rerun}.",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1) from None
