"""A Hugging Face Hub cache on disk, laid out as huggingface_hub 2.x writes and reads it (no network).

    <cache>/models--<org>--<name>/blobs/<sha256>             the file bytes
    <cache>/models--<org>--<name>/refs/<revision>            the commit hash, no newline (not for a commit revision)
    <cache>/models--<org>--<name>/snapshots/<commit>/<file>  a relative symlink to the blob (a copy without symlinks)

Offline, `hf_hub_download(repo_id, file, revision=r)` reads refs/<r> (r a branch or tag) for the commit and returns
snapshots/<commit>/<file> when it exists (`file_download._hf_hub_download_to_cache_dir`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil

__all__ = ["make_hub_cache", "offline_hub"]


def make_hub_cache(cache_dir: str | os.PathLike, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
    """Lay out `files` ({"config.json": b"...", ...}) as `repo_id` at `revision`; return the snapshot dir.

    The commit is a fake 40-hex hash of the content (or `revision` itself when that is a commit hash), so the
    same files give the same snapshot.
    """
    repo = os.path.join(os.fspath(cache_dir), "models--" + repo_id.replace("/", "--"))
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision  # hf_hub_download goes straight to snapshots/<commit>; no ref is written for a hash
    else:
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        commit = digest.hexdigest()
        ref = os.path.join(repo, "refs", *revision.split("/"))
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w", encoding="utf-8") as f:
            f.write(commit)  # read back verbatim: a trailing newline would make another commit hash
    snapshot = os.path.join(repo, "snapshots", commit)
    for name, data in files.items():
        blob = os.path.join(repo, "blobs", hashlib.sha256(data).hexdigest())  # an LFS file's etag is its sha256
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as f:
            f.write(data)
        pointer = os.path.join(snapshot, *name.split("/"))
        os.makedirs(os.path.dirname(pointer), exist_ok=True)
        if os.path.lexists(pointer):
            os.remove(pointer)
        try:
            os.symlink(os.path.relpath(blob, os.path.dirname(pointer)), pointer)
        except OSError:  # no symlinks (Windows without developer mode): huggingface_hub then copies too
            shutil.copyfile(blob, pointer)
    return snapshot


def offline_hub(monkeypatch, cache_dir: str | os.PathLike) -> str:
    """Point huggingface_hub at `cache_dir`, offline, for one test. Its `constants` read HF_HUB_OFFLINE and
    HF_HUB_CACHE once, at import, and hf_hub_download reads those module attributes at each call: set both the env
    (for a first import) and the attributes (for a module already imported). Skips without huggingface_hub."""
    import pytest

    constants = pytest.importorskip("huggingface_hub.constants")
    path = os.fspath(cache_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", path)
    return path
