"""Checksum manifests for checkpoint directories: size + SHA-256 of every file.

Orbax verifies nothing it reads back (a flipped byte in an array file restores as a wrong
value).  :func:`write_manifest` records every file of a finished checkpoint directory in
``checksums.json``; :func:`verify_manifest` checks them and raises :class:`CheckpointError`
naming the first missing, resized or changed file.  Used by the training checkpoints
(``td_jax.train.checkpoint``) and by converted models (``td_jax.convert.checkpoint``).
"""
from __future__ import annotations

import hashlib
import json
import os

from etils import epath

MANIFEST = "checksums.json"
# Written by Orbax at commit time, after the manifest: not covered by it.
UNCHECKED = ("_CHECKPOINT_METADATA", "commit_success.txt")
_CHUNK = 8 << 20


class CheckpointError(ValueError):
    """A checkpoint step is missing, damaged or incomplete; the message names its path."""


def _files(step_dir: epath.Path) -> list[str]:
    """Relative paths of the files of ``step_dir`` a manifest covers, sorted."""
    out = []
    for parent, _, names in step_dir.walk():
        for name in names:
            rel = str((parent / name).relative_to(step_dir))
            if rel not in UNCHECKED and rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def _digest(path: epath.Path) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def write_manifest(step_dir: str | os.PathLike) -> dict:
    """Records size + SHA-256 of every file under ``step_dir`` in ``step_dir/checksums.json``.

    Works on any Orbax checkpoint directory (also, e.g., a converted model's ``params/``).
    Returns the manifest.
    """
    step_dir = epath.Path(step_dir)
    files = {rel: list(_digest(step_dir / rel)) for rel in _files(step_dir)}
    manifest = {"format": 1, "algorithm": "sha256", "files": files}
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=0))
    tmp.rename(step_dir / MANIFEST)
    return manifest


def verify_manifest(step_dir: str | os.PathLike) -> int:
    """Checks every file listed in ``step_dir/checksums.json``; returns the number of bytes checked.

    Raises :class:`CheckpointError` naming the first missing, resized or changed file, or an
    absent / unreadable manifest.
    """
    step_dir = epath.Path(step_dir)
    path = step_dir / MANIFEST
    if not path.exists():
        raise CheckpointError(f"{step_dir}: no {MANIFEST} (the save did not complete, or the step was copied "
                              "incompletely)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("unknown layout")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: unreadable checksum manifest ({type(e).__name__}: {e})") from None
    total = 0
    for rel, entry in sorted(files.items()):
        f = step_dir / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: file missing (listed in {MANIFEST})")
        size, digest = _digest(f)
        want_size, want_digest = entry
        if size != want_size:
            raise CheckpointError(f"{f}: {size} bytes, {want_size} when saved (truncated or overwritten)")
        if digest != want_digest:
            raise CheckpointError(f"{f}: SHA-256 differs from the one recorded at save (damaged)")
        total += size
    return total
