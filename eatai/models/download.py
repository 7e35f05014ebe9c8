"""Downloading zoo checkpoints into a cache: pooch for URLs, gdown for Google Drive ids, huggingface_hub
for files on the Hub. A file is downloaded under a temporary name, checked (not an HTML page, a
complete archive, the pinned checksum if the zoo has one), and only then moved into place with its
SHA-256 written beside it (`<file>.sha256`). Later loads verify the file against that record, so a
file changed or damaged on disk is refused instead of loaded. A bad file never stays in the cache.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .._utils.io import atomic_write_text, cache_dir

__all__ = ['Source', 'ZooDownloadError', 'ChecksumError', 'cache_dir', 'cached_path', 'download', 'file_sha256',
           'verify_cached']

_KINDS = ('url', 'gdrive', 'hf', 'manual')


class ZooDownloadError(RuntimeError):
    """A checkpoint could not be downloaded (offline, HTTP error, Drive refusing); the message gives the manual route."""


class ChecksumError(ValueError):
    """A checkpoint's SHA-256 differs from the recorded or pinned one; the file has been removed."""


@dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from: kind 'url' (location: an http(s) URL), 'gdrive' (a Google
    Drive file id), 'hf' ('owner/repo/path/in/repo' on the Hugging Face Hub) or 'manual' (a page
    to download it from by hand, e.g. a Drive folder: eatai cannot fetch it itself)."""

    kind: str
    location: str

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"unknown source kind {self.kind!r}: use one of {_KINDS}")

    @property
    def browser_url(self) -> str:
        """A URL a person can open to download the file by hand."""
        if self.kind == 'gdrive':
            return f"https://drive.google.com/uc?id={self.location}"
        if self.kind == 'hf':
            owner, repo, path = self.location.split('/', 2)
            return f"https://huggingface.co/{owner}/{repo}/resolve/main/{path}"
        return self.location


def cached_path(dataset: str, threat: str, filename: str) -> Path:
    """Where the cache keeps a zoo checkpoint."""
    return cache_dir() / 'zoo' / dataset / threat / filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + '.sha256')


def file_sha256(path) -> str:
    """SHA-256 of a file, in hex (pooch's hasher: reads in chunks)."""
    import pooch
    return pooch.file_hash(str(path), alg='sha256')


def _manual_route(source: Source, target: Path) -> str:
    return (f"Manual route: download {source.browser_url} in a browser and save it as {target} "
            "(eatai records its SHA-256 the first time it loads it). EATAI_HOME sets the cache folder.")


def _check_content(path: Path, name: str, source: Source, target: Path) -> None:
    """Refuse what is not a checkpoint: an HTML page (Google Drive's quota or virus-scan page, a login
    page), a truncated zip archive (torch.save's format), anything that is no known weights format."""
    with open(path, 'rb') as f:
        head = f.read(1024)
    low = head.lstrip().lower()
    if low.startswith((b'<!doctype html', b'<html', b'<?xml', b'<head')) or b'<html' in low:
        raise ValueError(f"the download of {name} is an HTML page, not a checkpoint (Google Drive serves one when "
                         f"its download quota is exceeded or it wants a confirmation). " + _manual_route(source, target))
    if head[:4] == b'PK\x03\x04':   # torch.save's zip format: its directory sits at the end, so truncation shows
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except zipfile.BadZipFile as e:
            raise ValueError(f"the download of {name} is a damaged or truncated archive ({e}). "
                             + _manual_route(source, target)) from None
        return
    if head[:1] == b'\x80':   # the legacy (pickle) torch format: a pickle protocol marker
        return
    if len(head) >= 9 and head[8:9] == b'{':   # safetensors: 8-byte header length, then JSON
        return
    raise ValueError(f"the download of {name} is not a checkpoint (starts with {head[:16]!r}). "
                     + _manual_route(source, target))


def _fetch(source: Source, tmp: Path, progress: bool) -> None:
    """Download `source` to exactly `tmp` with the ecosystem's library for that kind of source."""
    if source.kind == 'manual':
        raise ZooDownloadError(f"this checkpoint has no direct download link (only the page {source.location})")
    if source.kind == 'url':
        import pooch
        pooch.retrieve(source.location, known_hash=None, fname=tmp.name, path=str(tmp.parent), progressbar=progress)
    elif source.kind == 'gdrive':
        import gdown
        if gdown.download(id=source.location, output=str(tmp), quiet=not progress) is None:
            raise ZooDownloadError(f"gdown could not download Drive file {source.location}")
    else:
        from huggingface_hub import hf_hub_download
        owner, repo, filename = source.location.split('/', 2)
        with tempfile.TemporaryDirectory(dir=tmp.parent) as folder:
            got = hf_hub_download(f"{owner}/{repo}", filename, local_dir=folder)
            os.replace(got, tmp)


def verify_cached(path: Path, expected: str | None = None) -> str:
    """Check a cached file against its recorded SHA-256 (and `expected`, a pinned one); record it
    when there is no record yet (a file put there by hand). A mismatch removes the file."""
    path = Path(path)
    actual = file_sha256(path)
    sidecar = _sidecar(path)
    recorded = sidecar.read_text().split()[0] if sidecar.exists() else None
    for what, want in (('pinned in the zoo', expected), ('recorded at download', recorded)):
        if want is not None and want.lower() != actual:
            path.unlink(missing_ok=True)
            raise ChecksumError(f"{path.name}: SHA-256 {actual} differs from the one {what} ({want}); the file "
                                "was removed from the cache. Load it again to download it anew.")
    if recorded is None:
        atomic_write_text(f"{actual}  {path.name}\n", sidecar)
    return actual


def download(source: Source, target, name: str | None = None, sha256: str | None = None, progress: bool = True,
             force: bool = False) -> Path:
    """The checkpoint at `target`, downloaded from `source` unless it is already there (verified
    against its recorded SHA-256, and `sha256` when the zoo pins one). Raises ZooDownloadError
    (network), ValueError (HTML or not a checkpoint), ChecksumError; nothing bad stays in the cache."""
    target, name = Path(target), name or Path(target).name
    if target.exists() and not force:
        verify_cached(target, sha256)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.part')
    os.close(fd)
    tmp = Path(tmp)
    tmp.unlink()   # the downloaders create the file themselves (pooch refuses to overwrite one)
    try:
        try:
            _fetch(source, tmp, progress)
        except ZooDownloadError as e:
            raise ZooDownloadError(f"could not download {name}: {e}. " + _manual_route(source, target)) from e
        except Exception as e:   # offline, HTTP 404, Drive refusing: the library's own exception types vary
            raise ZooDownloadError(f"could not download {name} from {source.browser_url} ({type(e).__name__}: "
                                   f"{e}). " + _manual_route(source, target)) from e
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise ZooDownloadError(f"the download of {name} is empty. " + _manual_route(source, target))
        _check_content(tmp, name, source, target)
        actual = file_sha256(tmp)
        if sha256 is not None and sha256.lower() != actual:
            raise ChecksumError(f"the download of {name} has SHA-256 {actual}, not the {sha256} pinned in the zoo; "
                                "it was not kept. " + _manual_route(source, target))
        # the record first: a file in place always has one (a crash between the two leaves no file)
        atomic_write_text(f"{actual}  {target.name}\n", _sidecar(target))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
