"""The registry client: manifests, blobs, byte ranges and pushes over the distribution API.

Every method takes the :class:`Reference` it works on (registry host and repository come from
it) and is safe to call from several threads at once; connections are kept alive per host.
Content is always checked against its digest: manifests fetched by digest, every blob download.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, BinaryIO

import msgspec

from lazypull.registry._auth import Authenticator, CredentialSource, repository_scopes
from lazypull.registry._budget import NetLimits
from lazypull.registry._httpx import httpx
from lazypull.registry._manifest import (
    ACCEPT_MANIFESTS,
    MAX_MANIFEST_SIZE,
    Descriptor,
    Platform,
    detect_media_type,
    is_index,
    parse_index,
    parse_manifest,
    select_platform,
)
from lazypull.registry._ranges import (
    RangeResponseError,
    merge_spans,
    parse_content_range,
    parse_range_response,
    unsatisfied_total,
)
from lazypull.registry._reference import Reference, parse_reference
from lazypull.registry._transport import DEFAULT_CERTS_DIRS, RetryPolicy, Transport, translate_errors
from lazypull.registry.errors import (
    DigestMismatchError,
    ManifestError,
    NotFoundError,
    RegistryConnectionError,
    RegistryError,
    TooLargeError,
)

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

CHUNK_SIZE = 8 << 20               # upload chunk (PATCH) size; smaller blobs go in one PUT
MAX_RANGES_PER_REQUEST = 64        # keeps the Range header well under server limits
WHOLE_BODY_LIMIT = 1 << 20         # read a 200 answer to a multi-range request only this far
MAX_TAG_LIST_SIZE = 1 << 20        # one tags/list page: 1000 tags of up to 128 characters fit well
MAX_TAG_PAGES = 1000               # tags/list pages list_tags follows by default
_DIGEST = re.compile(r"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")


def _hasher(digest: str) -> hashlib._Hash:
    if not _DIGEST.match(digest):
        raise RegistryError(f"invalid digest {digest!r}")
    return hashlib.new(digest.split(":", 1)[0])


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """``algorithm:hex`` of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _as_ref(ref: Reference | str) -> Reference:
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    if parsed.transport != "docker":
        raise RegistryError(f"{parsed} is not a registry reference")
    return parsed


class RegistryClient:
    """A thread-safe, keep-alive client for OCI distribution registries.

    ``insecure``: True (all hosts) or a list of hosts that may use plain HTTP or unverified TLS.
    ``ca_files``: extra CA certificates (PEM). ``auth``: where credentials come from
    (:class:`DockerConfigAuth`, :class:`StaticAuth`, default anonymous). ``retry``: the retry policy.
    ``limits``: every request's deadline and minimum rate, and when a host counts as down
    (:class:`NetLimits`). ``timeout``: the longest wait for any one socket operation.
    """

    def __init__(self, insecure: bool | Sequence[str] = False, ca_files: Sequence[str | Path] = (),
                 auth: CredentialSource | None = None, *, retry: RetryPolicy | None = None,
                 certs_dirs: Sequence[str | Path] = DEFAULT_CERTS_DIRS, timeout: float = 60.0,
                 chunk_size: int = CHUNK_SIZE, limits: NetLimits | None = None) -> None:
        self.transport = Transport(insecure=insecure, ca_files=ca_files, authenticator=Authenticator(auth),
                                   retry=retry, certs_dirs=certs_dirs, timeout=timeout, limits=limits)
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._single_range_hosts: set[str] = set()   # answer multi-range requests with 200
        self._warmed = float("-inf")                 # when warm() last opened connections (monotonic)

    def warm_up(self) -> None:
        """Load now what the first request would (see ``Transport.warm_up``): for long-lived clients."""
        self.transport.warm_up()

    def close(self) -> None:
        """Close all connections."""
        self.transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------------------
    def _request(self, ref: Reference, method: str, path: str, *, push: bool = False,
                 extra_scopes: tuple[str, ...] = (), **kwargs: object) -> httpx.Response:
        actions = ("pull", "push") if push else ("pull",)
        scopes = repository_scopes(ref.repository, actions) + extra_scopes
        return self.transport.request(method, ref.api_host, path, scopes=scopes, **kwargs)  # type: ignore[arg-type]

    @staticmethod
    def _repo_path(ref: Reference, kind: str, rest: str = "") -> str:
        return f"/v2/{ref.repository}/{kind}/{rest}"

    def ping(self, host: str) -> None:
        """Check that ``host`` speaks the registry API (and learn its scheme and auth)."""
        self.transport.base_url(parse_reference(f"{host}/x").api_host)

    def check_login(self, host: str) -> None:
        """Authenticate to ``host`` with the configured credentials (``lazypull login``).

        Like docker: ``GET /v2/`` with basic auth, or with a token obtained without a scope.
        Raises AuthError if the registry or its token server refuses the credentials.
        """
        api_host = parse_reference(f"{host}/x").api_host
        self.transport.base_url(api_host)
        self.transport.request("GET", api_host, "/v2/", scopes=(), what=f"logging in to {host}",
                               retry=False)

    # -- manifests ----------------------------------------------------------------------------------
    def get_manifest(self, ref: Reference | str) -> tuple[bytes, str, str]:
        """The manifest or index ``ref`` names: raw bytes, media type, digest (checked)."""
        ref = _as_ref(ref)
        what = f"fetching manifest {ref}"
        response = self._request(ref, "GET", self._repo_path(ref, "manifests", ref.identifier),
                                 what=what, headers={"Accept": ACCEPT_MANIFESTS}, stream=True)
        try:
            raw = _read_limited(response, MAX_MANIFEST_SIZE, what, "manifest")
        finally:
            response.close()
        algorithm = (ref.digest or "sha256:").split(":", 1)[0]
        actual = compute_digest(raw, algorithm)
        expected = ref.digest or response.headers.get("Docker-Content-Digest")
        if expected and expected.startswith(f"{algorithm}:") and expected != actual:
            raise DigestMismatchError(what, expected=expected, actual=actual, url=response.request.url)
        media_type = detect_media_type(raw, response.headers.get("Content-Type"))
        return raw, media_type, actual

    def head_manifest(self, ref: Reference | str) -> Descriptor:
        """The descriptor (media type, digest, size) of what ``ref`` names, without its body."""
        ref = _as_ref(ref)
        response = self._request(ref, "HEAD", self._repo_path(ref, "manifests", ref.identifier),
                                 what=f"checking manifest {ref}", headers={"Accept": ACCEPT_MANIFESTS})
        digest = response.headers.get("Docker-Content-Digest") or ref.digest
        size = response.headers.get("Content-Length")
        if not digest or not size or not size.isdigit():
            # Some registries omit the digest on HEAD; a GET tells for sure.
            raw, media_type, digest = self.get_manifest(ref)
            return Descriptor(media_type, digest, len(raw))
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return Descriptor(media_type, digest, int(size))

    def put_manifest(self, ref: Reference | str, raw: bytes, media_type: str) -> str:
        """Upload a manifest under ``ref``'s tag (or digest); return its digest."""
        ref = _as_ref(ref)
        if len(raw) > MAX_MANIFEST_SIZE:
            raise TooLargeError(f"manifest for {ref} of {len(raw)} bytes exceeds {MAX_MANIFEST_SIZE}")
        digest = compute_digest(raw)
        if ref.digest and ref.digest != digest:
            raise DigestMismatchError(f"pushing manifest {ref}", expected=ref.digest, actual=digest)
        target = ref.digest or ref.tag or "latest"
        response = self._request(ref, "PUT", self._repo_path(ref, "manifests", target), push=True,
                                 what=f"pushing manifest {ref}", ok=(200, 201, 202),
                                 headers={"Content-Type": media_type}, content=raw)
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise DigestMismatchError(f"registry stored manifest {ref} as", expected=digest, actual=answered,
                                      url=response.request.url)
        return digest

    def resolve_image(self, ref: Reference | str, platform: Platform | str | None = None,
                      ) -> tuple[bytes, str, str]:
        """The image manifest for ``platform`` (default this machine), following an index.

        Returns raw bytes, media type and digest of the platform's image manifest.
        """
        ref = _as_ref(ref)
        raw, media_type, digest = self.get_manifest(ref)
        if not is_index(media_type):
            parse_manifest(raw, media_type)
            return raw, media_type, digest
        chosen = select_platform(parse_index(raw, media_type), platform)
        raw, media_type, digest = self.get_manifest(ref.with_digest(chosen.digest))
        if is_index(media_type):
            raise ManifestError(f"{ref}: nested index {chosen.digest} is not supported")
        parse_manifest(raw, media_type)
        return raw, media_type, digest

    def list_tags(self, ref: Reference | str, *, max_pages: int = MAX_TAG_PAGES) -> list[str]:
        """The tags of ``ref``'s repository, following ``Link`` pagination for at most ``max_pages``
        pages (the tags of the pages read, when there are more).

        Each page is read to at most ``MAX_TAG_LIST_SIZE`` bytes (TooLargeError beyond) and must be
        the spec's document, an object whose ``tags`` is a list of strings (or null): anything else is
        a RegistryError naming what the page was.
        """
        ref = _as_ref(ref)
        tags: list[str] = []
        path = self._repo_path(ref, "tags", "list")
        params: dict[str, str] | None = {"n": "1000"}
        what = f"listing tags of {ref.name}"
        for _ in range(max_pages):
            response = self._request(ref, "GET", path, params=params, what=what, stream=True)
            try:
                body = _read_limited(response, MAX_TAG_LIST_SIZE, what, "a page")
            finally:
                response.close()
            tags.extend(_tag_page(body, ref.name, response.request.url))
            link = response.links.get("next", {}).get("url")
            if not link:
                break
            path, params = str(response.request.url.join(link)), None
        return tags

    # -- blobs --------------------------------------------------------------------------------------
    def blob_size(self, ref: Reference | str, digest: str, *, for_push: bool = False) -> int:
        """The blob's size (HEAD); NotFoundError if the repository does not have it.

        ``for_push`` asks for a push token right away (the check that starts a push).
        """
        ref = _as_ref(ref)
        response = self._request(ref, "HEAD", self._repo_path(ref, "blobs", digest), push=for_push,
                                 what=f"checking blob {digest} in {ref.name}")
        size = response.headers.get("Content-Length")
        if size is None or not size.isdigit():
            raise RegistryError(f"HEAD of blob {digest} in {ref.name} has no Content-Length",
                                url=response.request.url)
        return int(size)

    def blob_exists(self, ref: Reference | str, digest: str, *, for_push: bool = False) -> bool:
        """Whether the repository has the blob."""
        try:
            self.blob_size(ref, digest, for_push=for_push)
        except NotFoundError:
            return False
        return True

    def get_blob(self, ref: Reference | str, digest: str, dest: BinaryIO | str | os.PathLike[str],
                 *, size: int | None = None, progress: Callable[[int], None] | None = None) -> None:
        """Download a blob into ``dest``, checking its digest; resumes broken transfers with Range.

        ``dest`` is a path (written to a temp file beside it and renamed into place only when the
        digest matches) or a writable binary file (rewound and truncated to where it started if
        the download fails, when it is seekable). ``progress`` gets byte counts as they arrive.
        """
        ref = _as_ref(ref)
        if isinstance(dest, str | os.PathLike):
            path = Path(dest)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    self._download(ref, digest, out, size, progress)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return
        start: int | None = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            start = dest.tell() if dest.seekable() else None
        try:
            self._download(ref, digest, dest, size, progress)
        except BaseException:
            if start is not None:
                with contextlib.suppress(OSError, ValueError):
                    dest.seek(start)
                    dest.truncate()
            raise

    def _download(self, ref: Reference, digest: str, out: IO[bytes], size: int | None,
                  progress: Callable[[int], None] | None) -> None:
        hasher = _hasher(digest)
        what = f"fetching blob {digest} from {ref.name}"
        path = self._repo_path(ref, "blobs", digest)
        policy = self.transport.retry
        written = 0
        failures = 0
        while True:
            headers = {"Range": f"bytes={written}-"} if written else None
            response = self._request(ref, "GET", path, what=what, stream=True, headers=headers,
                                     ok=(200, 206), expected=(size - written) if size else 0)
            try:
                if written and response.status_code == 200:
                    # The server ignored Range: start over from this full answer.
                    try:
                        out.seek(-written, os.SEEK_CUR)
                        out.truncate()
                    except (OSError, ValueError, AttributeError) as err:
                        raise RegistryError(f"{what}: the server ignored Range when resuming at {written} "
                                            "and the destination cannot be rewound",
                                            url=response.request.url) from err
                    hasher, written = _hasher(digest), 0
                elif response.status_code == 206:
                    try:
                        got_start = parse_content_range(response.headers.get("Content-Range"))[0]
                    except RangeResponseError as err:
                        raise RegistryError(f"{what}: {err}", url=response.request.url) from err
                    if got_start != written:
                        raise RegistryError(f"{what}: asked to resume at {written}, got {got_start}",
                                            url=response.request.url)
                with translate_errors("GET", response.request.url):
                    for chunk in response.iter_bytes():
                        if size is not None and written + len(chunk) > size:
                            raise DigestMismatchError(f"{what}: more than the expected {size} bytes",
                                                      expected=digest, actual="(longer content)",
                                                      url=response.request.url)
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                        if progress:
                            progress(len(chunk))
                break
            except RegistryConnectionError as err:
                failures += 1
                if failures >= policy.attempts or not err.temporary:
                    raise
                log.debug("%s: resuming at %d after: %s", what, written, err)
            finally:
                response.close()
        actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
        if size is not None and written != size:
            raise DigestMismatchError(f"{what}: got {written} bytes, expected {size}", expected=digest,
                                      actual=actual)
        if actual != digest:
            raise DigestMismatchError(what, expected=digest, actual=actual)

    def fetch_blob(self, ref: Reference | str, digest: str, *, max_size: int = 64 << 20) -> bytes:
        """A small blob (config, external TOC) in memory, digest checked."""
        ref = _as_ref(ref)
        buf = io.BytesIO()
        self.get_blob(ref, digest, buf, progress=_limit(max_size, digest))
        return buf.getvalue()

    # -- ranges -------------------------------------------------------------------------------------
    def read_range(self, ref: Reference | str, digest: str, offset: int, length: int, *,
                   deadline: float | None = None, retry: bool = True) -> bytes:
        """Bytes ``[offset, offset+length)`` of a blob (shorter only at the end of the blob)."""
        return self.read_ranges(ref, digest, [(offset, length)], deadline=deadline, retry=retry)[0]

    def read_ranges(self, ref: Reference | str, digest: str, ranges: Iterable[tuple[int, int]], *,
                    deadline: float | None = None, retry: bool = True) -> list[bytes]:
        """Several byte ranges of a blob, in one multi-range request per 64 ranges when possible.

        Falls back to one request per range if the server answers a multi-range request with
        the whole body or an unusable answer. Results are in the order asked. ``deadline``
        (monotonic): no request outlives it. ``retry=False``: each request is tried once, for a
        caller that retries on its own (the lazy layers, until their read deadline).
        """
        ref = _as_ref(ref)
        wanted = [(int(o), int(n)) for o, n in ranges]
        for off, n in wanted:
            if off < 0 or n < 0:
                raise ValueError(f"invalid range offset={off} length={n}")
        results: list[bytes] = [b""] * len(wanted)
        todo = [i for i, (_, n) in enumerate(wanted) if n > 0]
        for start in range(0, len(todo), MAX_RANGES_PER_REQUEST):
            batch = todo[start:start + MAX_RANGES_PER_REQUEST]
            got = self._fetch_ranges(ref, digest, [wanted[i] for i in batch], deadline, retry)
            for i, data in zip(batch, got, strict=True):
                results[i] = data
        return results

    def _fetch_ranges(self, ref: Reference, digest: str, ranges: list[tuple[int, int]],
                      deadline: float | None, retry: bool) -> list[bytes]:
        # Merge overlapping/adjacent ranges: servers reject or collapse overlapping specs.
        spans = merge_spans((off, off + n) for off, n in ranges)
        if len(spans) > 1 and ref.api_host in self._single_range_hosts:
            answers = []
            for span in spans:
                answer = self._fetch_spans(ref, digest, [span], allow_whole=True, deadline=deadline,
                                           retry=retry)
                assert answer is not None
                answers.append(answer)
            starts = [start for start, _ in spans]
            out = []
            for off, n in ranges:
                parts, total = answers[bisect.bisect_right(starts, off) - 1]
                out.append(_slice(parts, off, n, total))
            return out
        got = self._fetch_spans(ref, digest, spans, allow_whole=len(spans) == 1
                                or max(e for _, e in spans) <= WHOLE_BODY_LIMIT, deadline=deadline,
                                retry=retry)
        if got is None:
            # A multi-range request answered with the whole (large) body: ask range by range.
            log.debug("%s answers multi-range requests with 200; using single ranges", ref.api_host)
            with self._lock:
                self._single_range_hosts.add(ref.api_host)
            return self._fetch_ranges(ref, digest, ranges, deadline, retry)
        parts, total = got
        return [_slice(parts, off, n, total) for off, n in ranges]

    def _fetch_spans(self, ref: Reference, digest: str, spans: list[tuple[int, int]], *,
                     allow_whole: bool, deadline: float | None = None, retry: bool = True,
                     ) -> tuple[dict[int, bytes], int | None] | None:
        """The answer to one Range request for ``spans``: parts by offset and the blob size.

        A 200 (whole body) answer is read up to the last span's end if ``allow_whole``; otherwise
        it is abandoned and None returned. Broken answers are asked again (``retry``) like failed
        requests.
        """
        what = f"reading ranges of blob {digest} from {ref.name}"
        path = self._repo_path(ref, "blobs", digest)
        header = "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in spans)
        asked = sum(e - s for s, e in spans) + 200 * len(spans)       # with part headers
        expected = max(max(e for _, e in spans), asked) if allow_whole else asked
        policy = self.transport.retry
        for attempt in range(policy.attempts if retry else 1):
            response = self._request(ref, "GET", path, what=what, stream=True, ok=(200, 206, 416),
                                     headers={"Range": header}, expected=expected, until=deadline,
                                     retry=retry)
            try:
                with translate_errors("GET", response.request.url):
                    if response.status_code == 416:
                        # Every range starts past the end; the answer says where the end is.
                        total = unsatisfied_total(response.headers.get("Content-Range"))
                        if total is None:
                            raise RangeResponseError("416 answer without the blob size")
                        return {}, total
                    if response.status_code == 200:
                        if not allow_whole:
                            return None
                        # Whole body: keep only what is needed, stop once past the last range.
                        needed = max(e for _, e in spans)
                        body = bytearray()
                        for chunk in response.iter_bytes():
                            body += chunk
                            if len(body) >= needed:
                                break
                        return {0: bytes(body)}, None
                    # The answer is what we asked for plus part headers; never more than that.
                    limit = sum(e - s for s, e in spans) + 1024 * len(spans) + (64 << 10)
                    return parse_range_response(
                        response.headers.get("Content-Type", ""),
                        response.headers.get("Content-Range"), _bounded(response.iter_bytes(), limit))
            except RangeResponseError as err:
                if not retry or attempt + 1 >= policy.attempts:
                    raise RegistryConnectionError(f"{what}: {err}", method="GET",
                                                  url=response.request.url) from err
            except RegistryConnectionError as err:
                if not retry or not err.temporary or attempt + 1 >= policy.attempts:
                    raise
            finally:
                response.close()
        raise AssertionError("unreachable")

    def blob_source(self, ref: Reference | str, digest: str, size: int | None = None) -> RegistryBlobSource:
        """One blob as a :class:`RegistryBlobSource` (size via HEAD if not given)."""
        ref = _as_ref(ref)
        if size is None:
            size = self.blob_size(ref, digest)
        return RegistryBlobSource(self, ref, digest, size)

    def warm(self, ref: Reference | str, digest: str, connections: int, *, interval: float,
             if_idle: float | None = None) -> bool:
        """Have ``connections`` keep-alive connections to ``ref``'s registry open (concurrent HEADs of
        the blob, in background threads), so a burst of concurrent requests does not wait a handshake
        each. Not again within ``interval`` s (the layers of an image share the client's connections);
        ``if_idle``: only when the client sent nothing for that long (its idle connections are gone).
        Whether it started."""
        ref = _as_ref(ref)
        now = time.monotonic()
        with self._lock:
            if if_idle is not None and now - self.transport.last_used < if_idle:
                return False
            if now - self._warmed < interval:
                return False
            self._warmed = self.transport.last_used = now
        for _ in range(connections):
            threading.Thread(target=self._warm_one, args=(ref, digest), name="warm", daemon=True).start()
        return True

    def _warm_one(self, ref: Reference, digest: str) -> None:
        try:
            self.blob_size(ref, digest)
        except Exception as err:     # only a head start: the reads report real failures
            log.debug("warming a connection to %s failed: %s", ref.registry, err)

    # -- push ---------------------------------------------------------------------------------------
    def mount_blob(self, ref: Reference | str, digest: str, source_repository: str) -> bool:
        """Ask the registry to link a blob from another repository; False if it would not."""
        ref = _as_ref(ref)
        scope = repository_scopes(source_repository, ("pull",))
        response = self._request(ref, "POST", self._repo_path(ref, "blobs", "uploads/"), push=True,
                                 extra_scopes=scope, ok=(201, 202),
                                 params={"mount": digest, "from": source_repository},
                                 what=f"mounting blob {digest} from {source_repository} into {ref.name}")
        if response.status_code == 201:
            return True
        self._cancel_upload(ref, response)
        return False

    def _cancel_upload(self, ref: Reference, response: httpx.Response) -> None:
        location = response.headers.get("Location")
        if not location:
            return
        with contextlib.suppress(RegistryError):
            self._request(ref, "DELETE", str(response.request.url.join(location)), push=True,
                          ok=(202, 204, 404), what="cancelling upload", retry=False)

    def push_blob(self, ref: Reference | str, digest: str, size: int,
                  opener: Callable[[], BinaryIO] | bytes, *, mount_from: Sequence[str] = ()) -> None:
        """Upload a blob unless the repository has it; try cross-repository mounts first.

        ``opener`` returns a fresh binary file positioned at the blob's start (called again for
        every attempt), or is the blob's bytes. Uploads of more than ``chunk_size`` bytes use
        PATCH chunks; the digest is checked while reading and the upload abandoned on mismatch.
        """
        ref = _as_ref(ref)
        _hasher(digest)
        if self.blob_exists(ref, digest, for_push=True):
            return
        for source in mount_from:
            if source != ref.repository and self.mount_blob(ref, digest, source):
                return
        open_fn: Callable[[], BinaryIO]
        if isinstance(opener, bytes | bytearray | memoryview):
            data = bytes(opener)

            def open_fn() -> BinaryIO:
                return io.BytesIO(data)
        else:
            open_fn = opener
        policy = self.transport.retry
        for attempt in range(policy.attempts):
            try:
                with open_fn() as src:
                    self._upload(ref, digest, size, src)
                return
            except RegistryError as err:
                if not err.temporary or attempt + 1 >= policy.attempts:
                    raise
                log.debug("retrying upload of %s: %s", digest, err)

    def _upload(self, ref: Reference, digest: str, size: int, src: BinaryIO) -> None:
        what = f"pushing blob {digest} to {ref.name}"
        start = self._request(ref, "POST", self._repo_path(ref, "blobs", "uploads/"), push=True,
                              ok=(202,), what=what)
        location = _location(start, what)
        hasher = _hasher(digest)
        offset = 0
        done = False
        try:
            if size <= self.chunk_size:
                data = _read_exact(src, size, what)
                hasher.update(data)
                _check(hasher, digest, what)
                response = self._request(ref, "PUT", location, push=True, ok=(201,), what=what,
                                         params={"digest": digest}, content=data, retry=False,
                                         headers={"Content-Type": "application/octet-stream"})
            else:
                while offset < size:
                    data = _read_exact(src, min(self.chunk_size, size - offset), what)
                    hasher.update(data)
                    patch = self._request(
                        ref, "PATCH", location, push=True, ok=(202,), what=what, content=data,
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{offset}-{offset + len(data) - 1}"},
                        retry=False)
                    location = _location(patch, what)
                    offset += len(data)
                _check(hasher, digest, what)
                response = self._request(ref, "PUT", location, push=True, ok=(201,), what=what,
                                         params={"digest": digest}, content=b"", retry=False)
            done = True
        finally:
            if not done:
                self._cancel_upload(ref, start)
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError(f"{what}: registry stored it as", expected=digest, actual=stored)


class RegistryBlobSource:
    """One blob in a registry, the only adapter from the client to byte-range reads.

    ``read_at`` is the ``lazypull.format.BlobSource`` protocol, retried by the client like any request.
    ``read_ranges`` (several ranges in one request) is the lazy layers' mode: each request is tried
    once and none outlives the caller's deadline, because the caller (``lazypull.fs.remote.RemoteBlob``)
    holds the one retry loop of a lazy read; ``warm`` opens connections ahead of a burst of them.
    """

    def __init__(self, client: RegistryClient, ref: Reference, digest: str, size: int) -> None:
        self.client, self.ref, self.digest, self._size = client, ref, digest, size

    @property
    def size(self) -> int:
        return self._size

    def describe(self) -> str:
        return f"{self.ref}@{self.digest}"

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        """Bytes of each ``(offset, length)`` range, short only at the end of the blob: one try (no
        retries), no request outliving ``deadline`` (monotonic)."""
        return self.client.read_ranges(self.ref, self.digest, ranges, deadline=deadline, retry=False)

    def warm(self, connections: int, *, interval: float, if_idle: float | None = None) -> bool:
        """``RegistryClient.warm`` for this blob's registry."""
        return self.client.warm(self.ref, self.digest, connections, interval=interval, if_idle=if_idle)

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``, short only at the end of the blob."""
        if offset < 0 or length < 0:
            raise ValueError(f"invalid read offset={offset} length={length}")
        length = min(length, max(0, self._size - offset))
        if length == 0:
            return b""
        data = self.client.read_range(self.ref, self.digest, offset, length)
        if len(data) != length:
            raise RegistryError(f"blob {self.digest} in {self.ref.name}: got {len(data)} bytes at "
                                f"offset {offset}, expected {length}")
        return data

    def __repr__(self) -> str:
        return f"RegistryBlobSource({self.ref.name}@{self.digest}, size={self._size})"


def _slice(parts: dict[int, bytes], offset: int, length: int, total: int | None) -> bytes:
    """Bytes [offset, offset+length) from the part covering them; short only at the blob's end.

    ``total`` is the blob size from Content-Range, or None for a whole-body (200) answer, where a
    body shorter than asked means the blob ends there.
    """
    end = offset + length if total is None else min(offset + length, total)
    if end <= offset:
        return b""
    for start, data in parts.items():
        if start <= offset < start + len(data) or (total is None and start <= offset):
            if start + len(data) >= end:
                return data[offset - start:end - start]
            if total is None:
                return data[offset - start:]
    raise RangeResponseError(f"server answer does not cover bytes {offset}-{offset + length - 1}")


def _bounded(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """Pass chunks through, failing once more than ``limit`` bytes arrived."""
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > limit:
            raise RangeResponseError(f"range answer larger than the {limit} bytes asked for")
        yield chunk


def _location(response: httpx.Response, what: str) -> str:
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"{what}: upload response has no Location", url=response.request.url)
    return str(response.request.url.join(location))


class _TagList(msgspec.Struct):
    """A ``tags/list`` page as the distribution spec has it (its ``name`` is not needed)."""

    tags: list[str] | None = None



def _read_limited(response: httpx.Response, limit: int, what: str, noun: str) -> bytes:
    """A streamed body of at most ``limit`` bytes: a registry may declare or send any size."""
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"{what}: {noun} of {declared} bytes exceeds {limit}", url=response.request.url)
    body = bytearray()
    with translate_errors("GET", response.request.url):
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise TooLargeError(f"{what}: {noun} exceeds {limit} bytes", url=response.request.url)
    return bytes(body)

def _tag_page(body: bytes, name: str, url: object) -> list[str]:
    """The tags of one ``tags/list`` page; RegistryError naming what is wrong when it is not the
    spec's ``{"name": ..., "tags": [...]}`` (msgspec bounds the nesting it reads)."""
    try:
        return msgspec.json.decode(body, type=_TagList).tags or []
    except msgspec.DecodeError as err:     # ValidationError too: the page's shape
        raise RegistryError(f"tag list of {name} is not the registry API's document: {err}", url=url) from err


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = src.read(n - got)
        if not chunk:
            raise RegistryError(f"{what}: source ended after {got} of {n} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _check(hasher: hashlib._Hash, digest: str, what: str) -> None:
    actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
    if actual != digest:
        raise DigestMismatchError(f"{what}: local content", expected=digest, actual=actual)


def _limit(max_size: int, digest: str) -> Callable[[int], None]:
    total = 0

    def count(n: int) -> None:
        nonlocal total
        total += n
        if total > max_size:
            raise TooLargeError(f"blob {digest} exceeds {max_size} bytes")
    return count
