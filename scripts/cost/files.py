"""Output files are written whole or not at all: a failed run leaves no half-written CSV or plot."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from splitrelay.cost.errors import CostInputError


@dataclass(frozen=True)
class Output:
    flag: str
    path: Path
    data: bytes


def check_output(path: Path, flag: str, suffixes: tuple[str, ...]) -> Path:
    """Refuse, before any work is done, an output that could not be written."""
    if path.suffix.lower() not in suffixes:
        raise CostInputError(flag, f"file name must end in {' or '.join(suffixes)}, got {path.name!r}")
    if path.is_dir():
        raise CostInputError(flag, f"{str(path)!r} is a directory")
    if not path.parent.is_dir():
        raise CostInputError(flag, f"directory {str(path.parent)!r} does not exist")
    return path


def write_atomic(outputs: Sequence[Output]) -> None:
    """Write every output to a temporary file beside its target, then rename each into place;
    a failure before the renames leaves no file behind."""
    umask = os.umask(0)
    os.umask(umask)
    temps: list[Path] = []
    try:
        for out in outputs:
            temps.append(_write_temp(out, 0o666 & ~umask))
        for out, temp in zip(outputs, temps, strict=True):
            try:
                os.replace(temp, out.path)
            except OSError as exc:
                raise _cannot_write(out, exc) from exc
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _write_temp(out: Output, mode: int) -> Path:
    try:
        fd, name = tempfile.mkstemp(dir=out.path.parent, prefix=f".{out.path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _cannot_write(out, exc) from exc
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(out.data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise _cannot_write(out, exc) from exc
    return temp


def _cannot_write(out: Output, exc: OSError) -> CostInputError:
    return CostInputError(out.flag, f"cannot write {str(out.path)!r}: {exc.strerror or exc}")
