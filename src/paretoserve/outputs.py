"""Where a command may write its output, and how, so that no user's file is ever lost.

Every command that writes goes through this module:

- A new output folder is built in a hidden temporary sibling (``.NAME.<random>.partial``) and moved
  into place only when complete (`building_folder`, or `temporary_folder` then `install_folder`).
  `plan` and `bench --sweep` fill their folder in place instead (`open_folder`): plan resumes from
  the results the folder already holds, and an interrupted sweep keeps every finished rate.
- Every output folder holds a marker file, ``.paretoserve`` (JSON: the command that wrote it and the
  paretoserve version). An existing folder is replaced (or reused) only when it is empty or its
  marker names the same command.
- A single-file output (a profile, an HTML report) replaces an existing file only when that file is
  the same kind of paretoserve output; the caller says how to recognise one.
- Everything else is refused with a one-line `UserError` naming the path and what to do: a folder
  holding anything else, another command's output, the working folder or a folder that holds it, a
  file where a folder is wanted and the reverse, a symbolic link, a path under a file or in a folder
  that cannot be written, and any path that is, lies inside or holds one of the command's inputs.
  Nothing overrides the input rule.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from paretoserve.atomic import write_text_atomic
from paretoserve.errors import UserError

MARKER_FILE = ".paretoserve"

#: Paths a command reads; entries that are None or do not exist on disk (bundled names) are ignored.
Inputs = Iterable[str | os.PathLike[str] | None]


def claim_folder(path: str | os.PathLike[str], command: str, *, inputs: Inputs = ()) -> Path:
    """Check that `command` (e.g. "simulate") may write its output folder at `path`: a new folder, an
    empty one, or an earlier output of the same command. Returns the (normalised) path; writes nothing.

    Raises:
        UserError: any other place (see the module docstring), naming the path and what to do.
    """
    target = _normalised(path)
    _check_place(target, inputs, folder=True)
    if not target.exists():
        return target
    if not target.is_dir():
        raise UserError(f"this is a file, and `paretoserve {command}` writes a folder: give a folder path "
                        "that does not exist yet", file=str(target))
    with write_errors(target):
        empty = next(target.iterdir(), None) is None
    if empty:
        return target
    written_by = _marker_command(target)
    if written_by is None:
        raise UserError(f"this folder exists and is not a paretoserve output (it has no {MARKER_FILE} marker), "
                        "so it is never replaced: give a new folder (or move this one away yourself)",
                        file=str(target))
    if written_by != command:
        raise UserError(f"this folder holds the output of `paretoserve {written_by}`, which "
                        f"`paretoserve {command}` does not replace: give another folder", file=str(target))
    return target


def temporary_folder(target: Path) -> Path:
    """A new hidden, empty sibling of `target` to build the output in (its parents are created)."""
    with write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))


def install_folder(tmp: Path, target: Path, command: str, *, inputs: Inputs = ()) -> None:
    """Mark the finished folder `tmp` as `command`'s output and move it to `target`, replacing the
    earlier output there. The place is claimed again first: it may have changed while `tmp` was built.
    """
    claim_folder(target, command, inputs=inputs)
    write_marker(tmp, command)
    with write_errors(target):
        if not target.exists():
            os.replace(tmp, target)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def building_folder(path: str | os.PathLike[str], command: str, *, inputs: Inputs = ()) -> Iterator[Path]:
    """Claim `path` for `command`, yield a temporary folder to fill, and install it at `path` when
    the block succeeds; on any failure the temporary folder is removed and `path` is untouched."""
    target = claim_folder(path, command, inputs=inputs)
    tmp = temporary_folder(target)
    try:
        yield tmp
        install_folder(tmp, target, command, inputs=inputs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_folder(path: str | os.PathLike[str], command: str, *, inputs: Inputs = ()) -> Path:
    """Claim `path` for `command` and create (or reuse) it in place, with its marker; for outputs
    filled as they go (plan's resumable search, a rate sweep). Returns the folder."""
    target = claim_folder(path, command, inputs=inputs)
    with write_errors(target):
        target.mkdir(parents=True, exist_ok=True)
    write_marker(target, command)
    return target


def write_marker(folder: Path, command: str) -> None:
    """Write the marker that says `folder` is an output of `command`."""
    with write_errors(folder):
        write_text_atomic(folder / MARKER_FILE, json.dumps(
            {"command": command, "version": metadata.version("paretoserve")}) + "\n")


def claim_file(path: str | os.PathLike[str], *, kind: str, is_ours: Callable[[Path], bool],
               inputs: Inputs = ()) -> Path:
    """Check that a single-file output of `kind` (e.g. "profile") may be written at `path`: a new file,
    or an existing regular file for which `is_ours` is true. Returns the (normalised) path.

    Raises:
        UserError: any other place (see the module docstring), naming the path and what to do.
    """
    target = _normalised(path)
    _check_place(target, inputs, folder=False)
    if target.is_dir():
        raise UserError(f"this is a folder, and the {kind} is one file: give a file path", file=str(target))
    if target.exists() and not (target.is_file() and is_ours(target)):
        raise UserError(f"this file exists and is not a paretoserve {kind}, so it is never replaced: give "
                        "a new file name (or move this one away yourself)", file=str(target))
    return target


@contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Turn an OSError (no space, no permission, read-only file system) while writing `path` into a
    one-line `UserError` naming it."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write here ({exc.strerror or exc})", file=str(path)) from None


def _normalised(path: str | os.PathLike[str]) -> Path:
    """`path` with "." and ".." folded in ("runs/a/.." is "runs"), so names compare as written."""
    return Path(os.path.normpath(path))


def _check_place(target: Path, inputs: Inputs, *, folder: bool) -> None:
    """The rules shared by folders and files: no link, no input, not the working folder, a writable parent."""
    if target.is_symlink():
        raise UserError("this is a symbolic link: give the path it points to, or another path", file=str(target))
    real = Path(os.path.realpath(target))
    if folder:
        cwd = Path(os.path.realpath(Path.cwd()))
        if real == cwd or real in cwd.parents:
            what = "the working folder" if real == cwd else "a folder that holds the working folder"
            raise UserError(f"this is {what}, which is never replaced: give a new folder, e.g. runs/NAME",
                            file=str(target))
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = Path(os.path.realpath(item))
        relation = ("is" if real == source else "lies inside" if source in real.parents
                    else "holds" if real in source.parents else None)
        if relation is not None:
            raise UserError(f"this {relation} the input {item}, and an output never goes into an input: "
                            "give another path", file=str(target))
    parent = target.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create it: {parent} is a file, not a folder", file=str(target))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in {parent} (read-only or no permission): give another path",
                        file=str(target))


def _marker_command(folder: Path) -> str | None:
    """The command named by `folder`'s marker, None without a readable marker."""
    try:
        data = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    command = data.get("command") if isinstance(data, dict) else None
    return command if isinstance(command, str) else None
