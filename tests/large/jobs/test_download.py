"""`mae.large.jobs.download` against a real HTTP server on 127.0.0.1 serving small official-format checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mae.large.errors import DownloadError
from mae.large.jobs import download as dl
from mae.large.jobs.download import REGISTRY, CheckpointSpec, download, resolve_names, verify_file
from tests.helpers import save_official, small_config, small_state_dict

FILENAME = "mae_small.pth"
HANG_SECONDS = 5.0  # how long a "hanging" server stalls; far beyond the client's 0.5 s timeout
CLIENT_TIMEOUT = 0.5
FULL_TENSORS = 62  # the small official model: encoder 30 + decoder 32
ENCODER_TENSORS = 30


# ================================================================================================
# The test server
# ================================================================================================
class FileServer:
    """What the handler serves and how it misbehaves; the test sets `mode` before calling download."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # URL path without the leading "/" -> body
        self.mode: str | None = None  # None | cut | 404 | hang | hang-body | ignore-range | redirect-ftp
        self.cut_at = 0
        self.cut_done = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) of every request
        self.stop = threading.Event()
        self.url = ""

    @property
    def count(self) -> int:
        return len(self.requests)


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            mode = state.mode
            if mode == "404":
                self.send_error(404, "Not Found")
                return
            if mode == "hang":  # accept the connection, never answer
                state.stop.wait(HANG_SECONDS)
                return
            if mode == "redirect-ftp":
                self._redirect(f"ftp://127.0.0.1/{FILENAME}")
                return
            if self.path.startswith("/moved/"):  # a same-scheme redirect, always allowed
                self._redirect(self.path[len("/moved"):])
                return
            body = state.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and mode != "ignore-range":
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if mode == "cut" and not state.cut_done:
                state.cut_done = True  # only the first request is cut short
                self.wfile.write(payload[: state.cut_at])
                self.close_connection = True
                return
            if mode == "hang-body":
                self.wfile.write(payload[:1000])
                self.wfile.flush()
                state.stop.wait(HANG_SECONDS)
                return
            self.wfile.write(payload)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up early (a refused size, a timeout) breaks the pipe: expected here.
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread; no proxy, no mirror variable."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)
    state = FileServer()
    httpd = QuietServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()  # wake any handler that is "hanging"
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The small model in the official file format: full (62 tensors) and encoder-only (30)."""
    folder = tmp_path_factory.mktemp("blobs")
    sd = small_state_dict()
    encoder = {k: v for k, v in sd.items() if not k.startswith(("mask_token", "decoder_"))}
    assert len(sd) == FULL_TENSORS and len(encoder) == ENCODER_TENSORS
    return {
        "full": save_official(folder / "full.pth", sd).read_bytes(),
        "encoder": save_official(folder / "encoder.pth", encoder).read_bytes(),
    }


def small_spec(server: FileServer, **changes: object) -> CheckpointSpec:
    spec = CheckpointSpec(
        name="small", filename=FILENAME, url=f"{server.url}/{FILENAME}", size=None, md5_prefix=None,
        kind="full", num_tensors=FULL_TENSORS, purpose="reconstruction / visualisation", config=small_config(),
    )
    return dataclasses.replace(spec, **changes)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ================================================================================================
# Happy paths
# ================================================================================================
def test_full_download(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    server.files[FILENAME] = blobs["full"]
    seen: list[tuple[int, int | None]] = []
    result = download(small_spec(server), tmp_path / "data", progress=lambda d, t: seen.append((d, t)))
    assert result.status == "downloaded"
    assert result.path == tmp_path / "data" / FILENAME
    assert result.path.read_bytes() == blobs["full"]
    assert (result.kind, result.num_tensors, result.bytes_fetched) == ("full", FULL_TENSORS, len(blobs["full"]))
    assert seen[0] == (0, len(blobs["full"])) and seen[-1] == (len(blobs["full"]), len(blobs["full"]))
    assert files_in(tmp_path / "data") == [FILENAME]  # no .part left behind
    assert server.requests == [(f"/{FILENAME}", None)]


def test_encoder_only_spec_and_known_size_and_md5(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    body = blobs["encoder"]
    server.files[FILENAME] = body
    spec = small_spec(server, kind="encoder-only", num_tensors=ENCODER_TENSORS, size=len(body),
                      md5_prefix=hashlib.md5(body).hexdigest()[:6])
    result = download(spec, tmp_path)
    assert (result.status, result.kind, result.num_tensors) == ("downloaded", "encoder-only", ENCODER_TENSORS)
    assert (tmp_path / FILENAME).read_bytes() == body


def test_resume_after_connection_cut(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    body = blobs["full"]
    server.files[FILENAME] = body
    server.mode, server.cut_at = "cut", len(body) // 2
    spec = small_spec(server)
    with pytest.raises(DownloadError, match=r"closed after .* bytes.*run again to resume") as info:
        download(spec, tmp_path)
    assert f"{server.url}/{FILENAME}" in str(info.value)
    part = tmp_path / (FILENAME + ".part")
    assert part.stat().st_size == len(body) // 2  # kept for the next run
    assert not (tmp_path / FILENAME).exists()

    result = download(spec, tmp_path)
    assert server.requests[-1] == (f"/{FILENAME}", f"bytes={len(body) // 2}-")
    assert result.status == "resumed"
    assert result.bytes_fetched == len(body) - len(body) // 2
    assert (tmp_path / FILENAME).read_bytes() == body
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    server.files[FILENAME] = blobs["full"]
    server.mode = "ignore-range"
    (tmp_path / (FILENAME + ".part")).write_bytes(b"x" * 1000)  # would corrupt the file if appended to
    result = download(small_spec(server), tmp_path)
    assert server.requests[-1][1] == "bytes=1000-"
    assert result.status == "downloaded" and result.bytes_fetched == len(blobs["full"])
    assert (tmp_path / FILENAME).read_bytes() == blobs["full"]


def test_complete_part_answered_416_is_verified_and_kept(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    server.files[FILENAME] = blobs["full"]
    (tmp_path / (FILENAME + ".part")).write_bytes(blobs["full"])
    result = download(small_spec(server), tmp_path)
    assert server.requests[-1][1] == f"bytes={len(blobs['full'])}-"
    assert (result.status, result.bytes_fetched) == ("resumed", 0)
    assert files_in(tmp_path) == [FILENAME]


def test_present_file_is_not_fetched_again_unless_forced(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    server.files[FILENAME] = blobs["full"]
    spec = small_spec(server)
    download(spec, tmp_path)
    assert server.count == 1
    again = download(spec, tmp_path)
    assert (again.status, again.bytes_fetched, server.count) == ("present", 0, 1)
    forced = download(spec, tmp_path, force=True)
    assert (forced.status, server.count) == ("downloaded", 2)
    assert (tmp_path / FILENAME).read_bytes() == blobs["full"]


def test_broken_file_at_destination_is_replaced(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    server.files[FILENAME] = blobs["full"]
    (tmp_path / FILENAME).write_bytes(blobs["encoder"])  # the wrong file under the right name
    ok, reason = verify_file(tmp_path / FILENAME, small_spec(server))
    assert not ok and "expected 62 (full)" in reason
    result = download(small_spec(server), tmp_path)
    assert result.status == "downloaded" and server.count == 1
    assert (tmp_path / FILENAME).read_bytes() == blobs["full"]


def test_same_scheme_redirect_is_followed(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    server.files[FILENAME] = blobs["full"]
    result = download(small_spec(server, url=f"{server.url}/moved/{FILENAME}"), tmp_path)
    assert [path for path, _ in server.requests] == [f"/moved/{FILENAME}", f"/{FILENAME}"]
    assert result.path.read_bytes() == blobs["full"]


def test_base_url_from_argument_and_environment(server: FileServer, blobs: dict[str, bytes], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Mirrors hold the files flat: {base}/{filename}, whatever folder the official URL uses.
    server.files[f"mirror/{FILENAME}"] = blobs["full"]
    spec = small_spec(server, url="https://dl.invalid/mae/visualize/" + FILENAME)
    download(spec, tmp_path / "a", base_url=f"{server.url}/mirror/")
    monkeypatch.setenv(dl.BASE_URL_ENV, f"{server.url}/mirror")
    result = download(spec, tmp_path / "b")
    assert [path for path, _ in server.requests] == [f"/mirror/{FILENAME}"] * 2
    assert result.url == f"{server.url}/mirror/{FILENAME}"
    assert result.path.read_bytes() == blobs["full"]


# ================================================================================================
# Verification failures: nothing at the destination, no .part left
# ================================================================================================
@pytest.mark.parametrize(
    ("served", "changes", "message"),
    [
        ("encoder", {}, r"has 30 tensors \(encoder-only\), expected 62 \(full\)"),
        ("full", {"size": 123}, r"serves [\d,]+ bytes but mae_small.pth is 123"),
        ("full", {"md5_prefix": "md5-wrong"}, r"has md5 [0-9a-f]{32}, expected one starting with md5-wrong"),
        ("html", {}, r"is not a readable checkpoint"),
    ],
    ids=["encoder-only-for-full", "wrong-size", "wrong-md5", "html-page"],
)
def test_content_failing_verification_is_removed(server: FileServer, blobs: dict[str, bytes], tmp_path: Path,
                                                 served: str, changes: dict, message: str) -> None:
    server.files[FILENAME] = b"<html><body>Not here</body></html>" if served == "html" else blobs[served]
    with pytest.raises(DownloadError, match=message) as info:
        download(small_spec(server, **changes), tmp_path)
    assert "nothing was saved" in str(info.value)
    assert files_in(tmp_path) == []


def test_wrong_size_without_content_length_is_caught_after_transfer(blobs: dict[str, bytes], tmp_path: Path) -> None:
    # The size check also runs on the file itself, for servers that send no Content-Length.
    part = tmp_path / "x.pth"
    part.write_bytes(blobs["full"])
    spec = CheckpointSpec("small", "x.pth", "http://127.0.0.1/x.pth", len(blobs["full"]) + 1, None, "full",
                          FULL_TENSORS, "test", small_config())
    ok, reason = verify_file(part, spec)
    assert not ok and reason == f"is {len(blobs['full']):,} bytes, expected {len(blobs['full']) + 1:,}"
    assert verify_file(part, dataclasses.replace(spec, size=None)) == (True, "62 tensors (full)")


def test_resumed_part_that_does_not_verify_is_removed(server: FileServer, blobs: dict[str, bytes], tmp_path: Path) -> None:
    server.files[FILENAME] = blobs["full"]
    part = tmp_path / (FILENAME + ".part")
    part.write_bytes(b"y" * 1000)  # a stale .part from something else: resuming it makes garbage
    with pytest.raises(DownloadError, match="not a readable checkpoint"):
        download(small_spec(server), tmp_path)
    assert files_in(tmp_path) == []
    assert download(small_spec(server), tmp_path).status == "downloaded"  # the next run starts clean


# ================================================================================================
# Network failures
# ================================================================================================
def test_404_names_status_and_url(server: FileServer, tmp_path: Path) -> None:
    server.mode = "404"
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(small_spec(server), tmp_path / "data")
    assert f"{server.url}/{FILENAME}" in str(info.value)
    assert "by hand" in str(info.value)
    assert files_in(tmp_path / "data") == []


@pytest.mark.parametrize("mode", ["hang", "hang-body"])
def test_hanging_server_is_bounded_by_timeout(server: FileServer, blobs: dict[str, bytes], tmp_path: Path,
                                              mode: str) -> None:
    server.files[FILENAME] = blobs["full"]
    server.mode = mode
    begin = time.monotonic()
    with pytest.raises(DownloadError, match="could not reach .*timed out") as info:
        download(small_spec(server), tmp_path, timeout=CLIENT_TIMEOUT)
    assert time.monotonic() - begin < 10
    assert f"save it as {tmp_path / FILENAME}" in str(info.value)
    assert not (tmp_path / FILENAME).exists()


def test_connection_refused(server: FileServer, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"could not reach http://127.0.0.1:{port}/{FILENAME}: .*by hand"):
        download(small_spec(server), tmp_path, base_url=f"http://127.0.0.1:{port}", timeout=2)
    assert files_in(tmp_path) == []


def test_redirect_to_another_scheme_is_refused(server: FileServer, tmp_path: Path) -> None:
    server.mode = "redirect-ftp"
    with pytest.raises(DownloadError, match=r"redirected to another scheme \(ftp://\)"):
        download(small_spec(server), tmp_path)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ("http://a.example/x", "https://b.example/x", True),
        ("https://a.example/x", "https://b.example/x", True),
        ("https://a.example/x", "http://a.example/x", False),
        ("http://a.example/x", "file:///etc/passwd", False),
        ("https://a.example/x", "https://user:pw@b.example/x", False),
    ],
)
def test_redirect_policy(old: str, new: str, allowed: bool) -> None:
    handler = dl._SafeRedirectHandler()
    request = urllib.request.Request(old, headers={"Range": "bytes=5-"})
    if allowed:
        follow = handler.redirect_request(request, io.BytesIO(), 302, "Found", {}, new)
        assert follow is not None and follow.full_url == new
        assert follow.get_header("Range") == "bytes=5-"  # a resumed download stays resumed
    else:
        with pytest.raises(DownloadError, match="refused"):
            handler.redirect_request(request, io.BytesIO(), 302, "Found", {}, new)


# ================================================================================================
# Names and URLs
# ================================================================================================
def test_registry_matches_the_published_files() -> None:
    assert list(REGISTRY) == ["visualize", "visualize-gan", "pretrain", "pretrain-full", "finetuned"]
    visualize, gan, pretrain, full, finetuned = REGISTRY.values()
    assert (finetuned.size, finetuned.md5_prefix, finetuned.kind, finetuned.num_tensors) == (None, "51f550", "fine-tuned",
                                                                                             296)
    assert (visualize.size, visualize.kind, visualize.num_tensors) == (1_318_315_181, "full", 398)
    assert (gan.size, gan.kind, gan.num_tensors) == (None, "full", 398)
    assert (pretrain.size, pretrain.md5_prefix, pretrain.kind, pretrain.num_tensors) == (None, "b8b06e", "encoder-only", 294)
    for spec in REGISTRY.values():
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/mae/") and spec.url.endswith("/" + spec.filename)
        assert spec.config.embed_dim == 1024 and spec.config.depth == 24
    assert "fine-tuning" in pretrain.purpose and "reconstruction" in visualize.purpose
    # The norm-pix pre-training file: official release pattern, size and md5 unpublished, structure checked.
    assert full.url == "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_large_full.pth"
    assert (full.size, full.md5_prefix, full.kind, full.num_tensors) == (None, None, "full", 398)


def test_resolve_names() -> None:
    assert [s.name for s in resolve_names(["all"])] == ["visualize", "visualize-gan", "pretrain", "pretrain-full",
                                                        "finetuned"]
    assert [s.name for s in resolve_names(["pretrain", "all", "Pretrain"])] == ["pretrain", "visualize", "visualize-gan",
                                                                               "pretrain-full", "finetuned"]
    with pytest.raises(DownloadError, match=r"unknown checkpoint 'visualise'; choose one of visualize, visualize-gan, "
                                            r"pretrain, pretrain-full, finetuned, all"):
        resolve_names(["visualize", "visualise"])


@pytest.mark.parametrize("base", ["file:///tmp/mirror", "ftp://127.0.0.1/mae", "127.0.0.1:8000", "http://u:p@127.0.0.1/"])
def test_base_url_must_be_plain_http_or_https(base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CheckpointSpec("small", FILENAME, "http://127.0.0.1/x", None, None, "full", FULL_TENSORS, "test", small_config())
    with pytest.raises(DownloadError, match="base URL") as info:
        download(spec, tmp_path, base_url=base)
    assert "u:p" not in str(info.value)  # credentials are never echoed
    monkeypatch.setenv(dl.BASE_URL_ENV, base)
    with pytest.raises(DownloadError, match="base URL"):
        download(spec, tmp_path)
    assert files_in(tmp_path) == []


def test_a_stale_copy_and_a_failed_refetch_say_both_reasons(server: FileServer, blobs: dict[str, bytes],
                                                            tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(blobs["encoder"])  # the wrong file under the right name; the server has none
    with pytest.raises(DownloadError) as info:
        download(small_spec(server), tmp_path)
    message = str(info.value)
    assert f"{tmp_path / FILENAME} is there but has 30 tensors (encoder-only)" in message
    assert "fetching it again failed" in message and "404" in message


def test_the_fine_tuned_file_is_verified_by_structure(tmp_path: Path) -> None:
    """A file shaped as mae_finetuned_vit_large.pth (global-pool ViT-L classifier, 1000 classes) verifies; the same
    file with its final norm, or without its head, does not."""
    import torch

    from mae.large import VisionTransformer, ViTConfig
    from tests.helpers import save_official

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in VisionTransformer(ViTConfig()).state_dict().items()}
    sd = {k: torch.zeros(1).expand(*s) for k, s in shapes.items()}  # one float each: a small file
    spec = REGISTRY["finetuned"]
    good = save_official(tmp_path / "mae_finetuned_vit_large.pth", sd)
    assert verify_file(good, spec) == (True, "296 tensors (fine-tuned)")
    headless = save_official(tmp_path / "headless.pth", {k: v for k, v in sd.items() if not k.startswith("head.")})
    ok, reason = verify_file(headless, spec)
    assert not ok and "expected 296 (fine-tuned)" in reason
