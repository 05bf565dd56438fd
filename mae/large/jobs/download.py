"""Fetch Meta's published MAE ViT-Large checkpoints, resumably, and keep only files that verify.

A file is streamed into `<dest>/<filename>.part`, checked (size and md5 prefix where known, then a
structural check: it must read as a checkpoint and hold exactly the tensors its spec promises), and
only then renamed onto `<dest>/<filename>`. So the final name only ever holds a verified file:
a reader never sees a half-downloaded or wrong checkpoint there.

Mirrors: pass `base_url` (or set `MAE_LARGE_BASE_URL`) and every file is fetched from
`{base_url}/{filename}`: a mirror holds the files flat, side by side, under their official names
(e.g. `https://mirror.example/mae/<file name>`), not in Meta's `visualize/` and
`pretrain/` sub-folders.

Only the standard library talks to the network (`urllib`): no credentials are ever sent, only
http and https are accepted, and redirects may not change scheme except http -> https.
Nothing here prints; progress goes to an optional callback and the CLI draws it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import catalog
from ..config import MAEConfig
from ..errors import DownloadError, first_line

log = logging.getLogger(__name__)

BASE_URL_ENV = "MAE_LARGE_BASE_URL"
CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for a lively progress bar
PART_SUFFIX = ".part"
USER_AGENT = "mae-large-download/0.1 (python urllib)"
ALLOWED_SCHEMES = ("http", "https")

Progress = Callable[[int, int | None], None]
Status = Literal["downloaded", "resumed", "present"]
SpecKind = Literal["full", "encoder-only", "fine-tuned"]


# ================================================================================================
# What can be downloaded
# ================================================================================================
@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint to fetch: where it lives and what a correct copy must look like.

    The published ones are built from `catalog.CHECKPOINTS` (`from_entry`); tests make their own.
    """

    name: str  # the short name the CLI takes (`visualize`, `pretrain` ...)
    filename: str  # the file name on disk (and on a flat mirror)
    url: str  # Meta's full URL
    size: int | None  # exact size in bytes, when known
    md5_prefix: str | None  # leading hex digits of the md5, as Meta publishes them in file names
    kind: SpecKind  # what `classify` must say about it
    num_tensors: int  # how many tensors `classify` must count
    purpose: str  # one line for `--list`: what the file is for
    config: MAEConfig = MAEConfig.vit_large()  # the model the structural check measures against

    @classmethod
    def from_entry(cls, entry: catalog.CheckpointEntry) -> CheckpointSpec:
        return cls(entry.name, entry.filename, entry.url, entry.size, entry.md5_prefix, entry.kind,
                   entry.num_tensors, entry.purpose, MAEConfig.from_architecture(entry.architecture))


REGISTRY: dict[str, CheckpointSpec] = {name: CheckpointSpec.from_entry(e) for name, e in catalog.CHECKPOINTS.items()}
ALL = catalog.ALL


def resolve_names(names: Iterable[str]) -> list[CheckpointSpec]:
    """The specs for `names` (`all` expands to every one), in order, each once."""
    specs: dict[str, CheckpointSpec] = {}
    for name in names:
        key = name.strip().lower()
        if key == ALL:
            specs.update(REGISTRY)
        elif key in REGISTRY:
            specs[key] = REGISTRY[key]
        else:
            valid = ", ".join([*REGISTRY, ALL])
            raise DownloadError(f"unknown checkpoint {name!r}; choose one of {valid}")
    return list(specs.values())


def source_url(spec: CheckpointSpec, base_url: str | None = None) -> str:
    """Where `spec` is fetched from: `{base_url}/{filename}` for a mirror, else Meta's URL.

    `base_url` falls back to `MAE_LARGE_BASE_URL`; an empty value means "no mirror".
    """
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV)
    if not base:
        _check_url(spec.url, what="URL")
        return spec.url
    _check_url(base, what="base URL")
    return f"{base.rstrip('/')}/{spec.filename}"


def _check_url(url: str, *, what: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.netloc:
        raise DownloadError(f"{what} {_redact(url)!r} is not an http:// or https:// URL; give an http(s) URL such as "
                            "https://mirror.example/mae")
    if parts.username is not None or parts.password is not None:
        # Credentials would travel with every request (and land in logs); this tool sends none.
        raise DownloadError(f"{what} {_redact(url)} holds credentials; use a mirror that needs none")


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


# ================================================================================================
# Verification
# ================================================================================================
def verify_file(path: str | Path, spec: CheckpointSpec, *, md5: bool = False) -> tuple[bool, str]:
    """Whether `path` is a correct copy of `spec`, and why (or why not), in a phrase.

    Checks the size where known, the md5 prefix only with `md5=True` (it reads the whole file: done
    after each download, skipped for the quick "already present" check), and the structure: the
    file must read as a checkpoint and `classify` must give `spec.kind` with `spec.num_tensors`.
    """
    path = Path(path)
    if not path.is_file():
        return False, f"{path} does not exist"
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return False, f"is {size:,} bytes, expected {spec.size:,}"
    if md5 and spec.md5_prefix:
        digest = file_md5(path)
        if not digest.startswith(spec.md5_prefix.lower()):
            return False, f"has md5 {digest}, expected one starting with {spec.md5_prefix}"
    return _check_structure(path, spec)


def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # an integrity check against Meta's published prefix
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _check_structure(path: Path, spec: CheckpointSpec) -> tuple[bool, str]:
    # A helper of its own so every tensor (memory-mapped from `path`) is released when it returns:
    # the caller renames or deletes the file next, which must not happen under a live mapping.
    from ..checkpoints.classify import classify
    from ..checkpoints.read import read_checkpoint
    from ..models.mae import MaskedAutoencoderViT

    try:
        data = read_checkpoint(path)
        result = classify(data.state_dict, MaskedAutoencoderViT.expected_state(spec.config), data.classifier)
    except Exception as exc:  # any failure to read it means it is not the checkpoint we asked for
        return False, f"is not a readable checkpoint ({first_line(str(exc))})"
    finally:
        data = None  # drop the mmap'd tensors now, not at the next garbage collection
    if result.kind != spec.kind or result.num_tensors != spec.num_tensors:
        detail = f": {result.problem()}" if result.kind == "incompatible" else ""
        return False, (f"has {result.num_tensors} tensors ({result.kind}{detail}), "
                       f"expected {spec.num_tensors} ({spec.kind})")
    return True, f"{result.num_tensors} tensors ({result.kind})"


# ================================================================================================
# Downloading
# ================================================================================================
@dataclass(frozen=True)
class DownloadResult:
    path: Path  # the verified file
    status: Status  # downloaded (from scratch), resumed (a .part completed), present (nothing fetched)
    bytes_fetched: int  # bytes transferred by this call
    seconds: float
    kind: str
    num_tensors: int
    url: str = ""  # where the bytes came from; empty when nothing was fetched


class _SafeRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects only within http/https, and never from https down to http."""

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any) -> Any:
        # urllib's own check runs before `redirect_request` and lets ftp:// through (and reports other
        # schemes as a bare HTTP error): check the target here first, with a message that says why.
        location = headers.get("location") or headers.get("uri")
        if location:
            _check_redirect(req.full_url, urllib.parse.urljoin(req.full_url, location), fp)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        _check_redirect(req.full_url, newurl, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_redirect(old: str, new: str, fp: Any) -> None:
    old_scheme = urllib.parse.urlsplit(old).scheme.lower()
    parts = urllib.parse.urlsplit(new)
    scheme = parts.scheme.lower()
    problem = None
    if scheme not in ALLOWED_SCHEMES:
        problem = f"to another scheme ({scheme or 'none'}://)"
    elif old_scheme == "https" and scheme == "http":
        problem = "from https down to plain http"
    elif parts.username is not None or parts.password is not None:
        problem = "to a URL with credentials"
    if problem:
        with contextlib.suppress(Exception):
            fp.close()
        raise DownloadError(f"{_redact(old)} redirected {problem} ({_redact(new)}); refused for safety, "
                            "download the file by hand or use a mirror (MAE_LARGE_BASE_URL)")


def _opener() -> urllib.request.OpenerDirector:
    # build_opener swaps in our redirect handler for the default one; no auth or cookie handlers are
    # installed, so no credentials go out. Proxies from the environment are honoured (ProxyHandler).
    return urllib.request.build_opener(_SafeRedirectHandler)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


def download(
    spec: CheckpointSpec,
    dest_dir: str | Path,
    *,
    base_url: str | None = None,
    force: bool = False,
    timeout: float = 30.0,
    progress: Progress | None = None,
) -> DownloadResult:
    """Download `spec` into `dest_dir` and verify it; resume a previous partial download.

    Returns at once with status `present` when a verified copy is already there (unless `force`).
    Raises `DownloadError` naming the URL and the fix on network errors (the `.part` file is kept so
    the next call resumes) and on verification failure (the `.part` file is removed).

    Args:
        spec: the checkpoint to fetch (`REGISTRY` / `resolve_names`, or one of your own).
        dest_dir: the folder for `<filename>` (and its `.part` while downloading).
        base_url: a mirror holding the files flat (`{base_url}/{filename}`); default `MAE_LARGE_BASE_URL`, and
            an empty value means Meta's URL.
        force: fetch again from byte 0 even when a verified copy is there (a stale `.part` is removed).
        timeout: seconds that bound the connection and every read, so a hanging server cannot hang the caller.
        progress: called as `progress(bytes_done, total_bytes or None)` as the file streams in.
    """
    start = time.monotonic()
    dest_dir = Path(dest_dir).expanduser()
    final = dest_dir / spec.filename
    part = dest_dir / (spec.filename + PART_SUFFIX)
    url = source_url(spec, base_url)

    stale = ""  # why a copy already at the final name was not kept, for the message if the fetch fails too
    if not force and final.exists():
        ok, reason = verify_file(final, spec)
        if ok:
            return DownloadResult(final, "present", 0, time.monotonic() - start, spec.kind, spec.num_tensors)
        stale = f"{final} is there but {reason}"
        log.info("%s: fetching it again", stale)
    if force:
        # A forced fetch starts clean: a stale .part is exactly what --force is meant to get rid of.
        part.unlink(missing_ok=True)

    try:
        fetched, status = _transfer(url, part, final, spec, timeout, progress)
    except DownloadError as exc:
        if not stale:
            raise
        raise DownloadError(f"{stale}, and fetching it again failed: {exc}") from None

    ok, reason = verify_file(part, spec, md5=True)
    if not ok:
        part.unlink(missing_ok=True)
        raise DownloadError(f"the file downloaded from {_redact(url)} {reason}; it was deleted and nothing was saved "
                            f"as {final}; check that the URL or mirror serves the official {spec.filename}")
    os.replace(part, final)
    return DownloadResult(final, status, fetched, time.monotonic() - start, spec.kind, spec.num_tensors, _redact(url))


def _transfer(url: str, part: Path, final: Path, spec: CheckpointSpec, timeout: float,
              progress: Progress | None) -> tuple[int, Status]:
    """Stream `url` into `part` (resuming it when it exists); return bytes fetched and the status."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    by_hand = f"download it by hand and save it as {final}, or set {BASE_URL_ENV} to a mirror"
    shown = _redact(url)
    try:
        response = _opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # Range not satisfiable: the .part already holds the whole file (verification decides).
            log.info("%s: server says %s is already complete", shown, part)
            return 0, "resumed"
        raise DownloadError(f"{shown} answered HTTP {exc.code} {exc.reason}; check the name or mirror, or {by_hand}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        detail = first_line(str(reason), default="") or type(exc).__name__
        raise DownloadError(f"could not reach {shown}: {detail}; {by_hand}") from None

    with response:
        code = response.status
        length = _int_header(response.headers.get("Content-Length"))
        if code == 206 and offset:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                # The server answered a different range than asked: start over rather than splice.
                response.close()
                part.unlink(missing_ok=True)
                return _transfer(url, part, final, spec, timeout, progress)
            total = int(match.group(3)) if match.group(3) != "*" else (offset + length if length is not None else None)
            mode, status = "ab", "resumed"
        elif code == 200:
            # A 200 to a Range request means the server ignored it: the body is the whole file.
            if offset:
                log.info("%s ignored the Range request: restarting from byte 0", shown)
            offset, total, mode, status = 0, length, "wb", "downloaded"
        else:
            raise DownloadError(f"{shown} answered HTTP {code} {response.reason}, not the file; {by_hand}")

        if spec.size is not None and total is not None and total != spec.size:
            # Refuse before moving a gigabyte: the server announces a different file.
            part.unlink(missing_ok=True)
            raise DownloadError(f"{shown} serves {total:,} bytes but {spec.filename} is {spec.size:,}; nothing was saved "
                                f"as {final}; check that the URL or mirror serves the official file")

        part.parent.mkdir(parents=True, exist_ok=True)
        done = offset
        fetched = 0
        # Only errors from the socket are network errors (keep the .part, resume later); a failing
        # write (disk full, permissions) propagates as the OSError it is.
        with part.open(mode) as f:
            if progress:
                progress(done, total)
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    f.close()
                    _drop_if_empty(part)
                    raise DownloadError(
                        f"could not reach {shown}: {first_line(str(exc), default='') or type(exc).__name__} after {done:,} bytes "
                        f"(kept in {part}; run again to resume); {by_hand}"
                    ) from None
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                fetched += len(chunk)
                if progress:
                    progress(done, total)
            f.flush()
            os.fsync(f.fileno())  # the rename after verification must not publish unwritten data

    if total is not None and done < total:
        # http.client returns b"" when a connection closes early instead of raising: compare lengths.
        _drop_if_empty(part)
        raise DownloadError(f"could not reach {shown}: the connection closed after {done:,} of {total:,} bytes "
                            f"(kept in {part}; run again to resume); {by_hand}")
    return fetched, status


def _drop_if_empty(part: Path) -> None:
    # An empty .part resumes nothing; leave no litter behind.
    with contextlib.suppress(OSError):
        if part.stat().st_size == 0:
            part.unlink()


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None

