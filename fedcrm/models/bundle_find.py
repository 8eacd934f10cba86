"""Where bundles are kept, and whose keys are trusted when no key is given.

A run directory holds its release in ``bundle/``; a branch keeps each run's
model as ``<model-dir>/bundle-<run_id>/``. :func:`find_bundle` accepts either
folder or a bundle itself.

Default trusted keys (:func:`default_key_files`) are the keys fedcrm stores
beside what it signs. They detect a damaged or swapped bundle, not someone who
can write those folders too: a bundle received from elsewhere is verified with
the key received out of band (``--trusted-key``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fedcrm.errors import BundleError, KeyFileError
from fedcrm.models.bundle import BRANCH_PREFIX, MANIFEST, RELEASE_KEY, RUN_BUNDLE
from fedcrm.privacy.signing import Ed25519PublicKey, load_public_key


def find_bundle(path: str | os.PathLike[str]) -> Path:
    """The bundle at ``path``: a bundle, a run directory's ``bundle/``, or the newest
    ``bundle-<run_id>/`` of a branch's model folder.

    Raises
    ------
    BundleError
        When there is none.
    """
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    if (p / RUN_BUNDLE / MANIFEST).is_file():
        return p / RUN_BUNDLE
    kept = (
        [d for d in p.glob(f"{BRANCH_PREFIX}*") if (d / MANIFEST).is_file()] if p.is_dir() else []
    )
    if kept:
        return max(kept, key=lambda d: ((d / MANIFEST).stat().st_mtime, d.name))
    raise BundleError(
        f"no model bundle at {p}: give a bundle directory, a run directory (holding "
        f"{RUN_BUNDLE}/) or a branch's model folder (holding {BRANCH_PREFIX}<run_id>/)"
    )


def default_key_files(bundle_dir: str | os.PathLike[str]) -> list[Path]:
    """Where a bundle's signing key is looked for when no ``--trusted-key`` is given.

    A run directory's bundle: ``<run>/keys/release.pub``. A branch's copy in
    ``<branch folder>/<model folder>/``: the ``*.pub`` keys in the model
    folder's ``keys/``, the branch folder's ``signing/`` and the branch folder.
    """
    b = Path(bundle_dir).resolve()
    if b.name == RUN_BUNDLE:
        return [f for f in [b.parent / "keys" / f"{RELEASE_KEY}.pub"] if f.is_file()]
    found: list[Path] = []
    for d in (b.parent / "keys", b.parent.parent / "signing", b.parent.parent):
        found += sorted(d.glob("*.pub")) if d.is_dir() else []
    return found


def load_trusted_keys(paths: Sequence[Path], *, strict: bool) -> list[Ed25519PublicKey]:
    """Ed25519 public keys from files or directories of ``*.pub``.

    ``strict`` raises on a named file that is not one; other files are skipped
    (key folders may hold other kinds of ``.pub``, e.g. node keys).
    """
    keys = []
    for p in paths:
        named = not Path(p).is_dir()
        files = [Path(p)] if named else sorted(Path(p).glob("*.pub"))
        for f in files:
            try:
                keys.append(load_public_key(f))
            except KeyFileError:
                if strict and named:
                    raise
    return keys


__all__ = ["default_key_files", "find_bundle", "load_trusted_keys"]
