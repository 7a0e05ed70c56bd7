"""``.npz`` archives (numpy's zip of ``.npy`` members), the lossless format of map files: read whole, replaced at
once, and added to without rewriting what they hold.

A reader never sees half a file: ``staged`` gives a writer a hidden name beside the final one and renames it over
the final name only when the writing succeeded (a rename within one folder is atomic), so a failed or killed save
leaves the file that was there before.
"""
from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["read_npz", "npz_names", "staged", "write_npz", "add_to_npz"]


@contextlib.contextmanager
def _opened(path):
    """The ``.npz`` file ``path`` open for reading; any failure while it is read becomes a ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            yield npz
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read {path} as .npz: {exc}") from exc


def read_npz(path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read at once, so a truncated file fails here and nothing is half
    loaded; ValueError naming the file when it is missing, damaged or not an ``.npz``."""
    with _opened(path) as npz:
        return {name: npz[name] for name in npz.files}


def npz_names(path) -> list[str]:
    """The array names of the ``.npz`` file ``path``, from its directory alone (no array is read); ValueError as
    ``read_npz``'s."""
    with _opened(path) as npz:
        return list(npz.files)


@contextlib.contextmanager
def staged(path):
    """The path to write the file ``path`` to: a hidden name in the same folder, renamed to ``path`` when the block
    ends without an exception (``path`` stays as it was if the block wrote nothing), removed when the block raises."""
    path = Path(path)
    staging = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield staging
        if staging.exists():
            os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_npz(path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to the ``.npz`` file ``path`` (``.npz`` appended when missing), replacing it at once;
    returns the path written."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with staged(path) as staging:
        np.savez(staging, **arrays)
    return path


def add_to_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """Add ``arrays`` to the ``.npz`` file ``path`` as new members, in place: the arrays already there are neither
    read nor rewritten. Call it on a file no one reads yet (a ``staged`` one); ValueError for a name it holds."""
    with zipfile.ZipFile(path, mode="a", allowZip64=True) as archive:
        held = {name.removesuffix(".npy") for name in archive.namelist()}
        clash = sorted(held.intersection(arrays))
        if clash:
            raise ValueError(f"{path} holds {clash} already")
        for name, value in arrays.items():
            with archive.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
