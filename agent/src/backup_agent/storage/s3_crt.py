"""CrtStore: the Store on S3 (and S3-compatible servers) through AWS's C runtime, awscrt.

awscrt's S3Client signs (SigV4, unsigned payloads: integrity comes from the x-amz-checksum-sha256
header the server verifies), pools connections and checks them before reuse, retries connection
errors, 5xx and throttling with backoff (the one retry layer), splits large PUTs into parts with
per-part SHA-256 checksums, and resolves credentials (crt_credentials.py) in C, so instance-profile
credentials cost what static keys cost. Operations the runtime has no special type for (list,
head, delete, restore, versioning, the parts of a streamed multipart upload) go through its
DEFAULT meta-requests; their XML answers are read by s3_xml.py with ElementTree.

Region: a bucket in another region answers 301 PermanentRedirect (region in the
x-amz-bucket-region header or the error body) or AuthorizationHeaderMalformed; the store then
signs for that region (and, on AWS endpoints, talks to that region's host) and asks once more.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from awscrt.auth import AwsCredentialsProvider
from awscrt.exceptions import AwsCrtError
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientBootstrap, ClientTlsContext, TlsContextOptions
from awscrt.s3 import (
    S3ChecksumAlgorithm,
    S3ChecksumConfig,
    S3ChecksumLocation,
    S3Client,
    S3RequestTlsMode,
    S3RequestType,
    S3ResponseError,
    S3RetryConfig,
    create_default_s3_signing_config,
)

from backup_agent.config import Storage
from backup_agent.immutability import lock_headers
from backup_agent.storage import crt_credentials, s3_xml
from backup_agent.storage.bodies import FileRange
from backup_agent.storage.crt_body import WINDOW, UploadStream, WindowedBody, b64_sha256
from backup_agent.storage.store import (
    Archived,
    Denied,
    Incomplete,
    Locked,
    NotFound,
    ObjectInfo,
    Readable,
    StoreError,
    Unreachable,
)

MAX_ATTEMPTS = 10  # per request, connection errors, 5xx and throttling (the runtime's retries)
MIN_PART = 5 << 20
DELETE_BATCH = 1000
NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload"})
DENIED = frozenset({"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken",
                    "ExpiredToken", "InvalidClientTokenId", "TokenRefreshRequired", "AllAccessDisabled"})
REDIRECT = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"})


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # host[:port] for the Host header
    path_style: bool


def endpoint_for(bucket: str, region: str, endpoint_url: str | None,
                 settings: crt_credentials.Settings) -> Endpoint:
    if endpoint_url:
        url = urlsplit(endpoint_url)
        path_style = settings.addressing_style != "virtual"
        host = url.netloc if path_style else f"{bucket}.{url.netloc}"
        return Endpoint(url.scheme or "https", host, path_style)
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    name = "s3-fips" if settings.fips else "s3"
    if settings.dualstack:
        name += ".dualstack"
    # Dots in a bucket name break TLS on virtual hosts (the wildcard certificate covers one label).
    dns_ok = bucket == bucket.lower() and "." not in bucket and 3 <= len(bucket) <= 63
    path_style = settings.addressing_style == "path" or (settings.addressing_style == "auto" and not dns_ok)
    base = f"{name}.{region}.{suffix}"
    return Endpoint("https", base if path_style else f"{bucket}.{base}", path_style)


class CrtStore:
    """See the module docstring. Build with `CrtStore.from_storage`; thread-safe."""

    list_page_size = 1000  # S3's own maximum; tests lower it to see pagination
    get_window = WINDOW  # bytes per ranged GET of a download (crt_body); tests lower it

    def __init__(self, *, bucket: str, region: str, endpoint_url: str | None,
                 credentials: AwsCredentialsProvider, settings: crt_credentials.Settings | None = None,
                 sse: str | None = None, kms_key_id: str | None = None, part_size: int = 128 << 20,
                 concurrency: int = 8, object_lock: tuple[str, int] | None = None) -> None:
        self.bucket = bucket
        self.label = f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self.settings = settings or crt_credentials.Settings()
        self.sse, self.kms_key_id = sse, kms_key_id
        self.part_size = max(MIN_PART, part_size)
        self.concurrency = max(1, concurrency)
        self.object_lock = object_lock
        self.storage: Storage | None = None  # set by from_storage: what a version-wise delete needs
        self._credentials = credentials
        self._bootstrap = ClientBootstrap.get_or_create_static_default()
        self._lock = threading.Lock()
        # Set once any request has been answered: the region is right from then on (a wrong one
        # is answered with a redirect). Until then a pack's bytes are kept after awscrt copied
        # them, since a redirect's second attempt must read them again (UploadStream `release`).
        self.answered = False
        self._open(region)

    @classmethod
    def from_storage(cls, storage: Storage, *, concurrency: int | None = None,
                     object_lock: tuple[str, int] | None = None) -> CrtStore:
        """The store for the config's `storage` section. `object_lock` = (mode, days) puts
        x-amz-object-lock-mode and a retain-until date `days` from each write on every write.
        Raises ConfigError (one line) for settings it cannot honour."""
        bootstrap = ClientBootstrap.get_or_create_static_default()
        settings = crt_credentials.settings(storage)
        creds, _ = crt_credentials.provider(storage, bootstrap)
        store = cls(bucket=storage.bucket, region=storage.region, endpoint_url=storage.endpoint_url,
                    credentials=creds, settings=settings, sse=storage.sse, kms_key_id=storage.kms_key_id,
                    part_size=storage.multipart_chunk_size, concurrency=concurrency or storage.concurrency,
                    object_lock=object_lock)
        store.storage = storage
        return store

    def _open(self, region: str) -> None:
        """(Re)build the runtime's client for `region` (at start, and after a region redirect)."""
        self.region = region
        self.endpoint = endpoint_for(self.bucket, region, self.endpoint_url, self.settings)
        tls = self.endpoint.scheme == "https"
        tls_options = None
        if tls:
            ctx = TlsContextOptions()
            if self.settings.ca_bundle:
                ctx.override_default_trust_store_from_path(None, self.settings.ca_bundle)
            tls_options = ClientTlsContext(ctx).new_connection_options()
        self.client = S3Client(
            bootstrap=self._bootstrap,
            region=region,
            tls_mode=S3RequestTlsMode.ENABLED if tls else S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options,
            signing_config=create_default_s3_signing_config(region=region, credential_provider=self._credentials),
            part_size=self.part_size,
            # As the config says (and BotoStore does): one PUT below two parts.
            multipart_upload_threshold=2 * self.part_size,
            # The agent shares its node with the service it backs up: a few connections per
            # worker are plenty, and the runtime's default (sized for 10 Gbit/s) is not.
            max_active_connections_override=max(8, self.concurrency * 2),
            # The runtime's part buffers (its minimum is 256 MiB; its default, for 10 Gbit/s, is
            # 2 GiB and more): a few parts in flight, not a share of the node's memory.
            memory_limit=max(256 << 20, self.part_size * 4),
            retry_config=S3RetryConfig(max_retries=MAX_ATTEMPTS - 1),
            connect_timeout_ms=10_000,
        )

    # --- requests --------------------------------------------------------------------------------

    def _path(self, key: str | None, query: dict[str, str] | None = None) -> str:
        path = f"/{quote(self.bucket)}" if self.endpoint.path_style else ""
        if key is not None:
            path += "/" + quote(key, safe="/~")
        path = path or "/"
        if query:
            # Sub-resources (`?uploads`, `?delete`) go without "=": the signer canonicalizes both alike.
            path += "?" + "&".join(quote(k, safe="~") + (f"={quote(v, safe='~')}" if v else "")
                                   for k, v in query.items())
        return path

    def _http(self, method: str, key: str | None, query: dict[str, str] | None,
              headers: Iterable[tuple[str, str]], body: Any = None, length: int | None = None) -> HttpRequest:
        hdrs = HttpHeaders([("Host", self.endpoint.host), *headers])
        if length is not None:
            hdrs.set("Content-Length", str(length))
        return HttpRequest(method, self._path(key, query), hdrs, body)

    def _call(self, op: str, key: str, attempt: Callable[[], Any]) -> Any:
        """Run one operation; follow one region redirect; map failures to the store's errors."""
        for redirected in (False, True):
            try:
                answer = attempt()
                self.answered = True
                return answer
            except S3ResponseError as exc:
                region = self._redirect_region(exc)
                if region and not redirected and region != self.region:
                    with self._lock:
                        if region != self.region:
                            self._open(region)
                    continue
                raise self._error(op, key, exc) from None
            except AwsCrtError as exc:
                raise self._error(op, key, exc) from None
        raise AssertionError("unreachable")

    def _redirect_region(self, exc: S3ResponseError) -> str:
        hdrs = {k.lower(): v for k, v in (exc.headers or [])}
        err = s3_xml.parse_error(exc.body)
        if exc.status_code not in (301, 307, 400) and err.code not in REDIRECT:
            return ""
        if exc.status_code == 400 and err.code not in REDIRECT:
            return ""
        region = hdrs.get("x-amz-bucket-region") or err.region
        if not region and exc.status_code == 301:
            region = self._probe_region()
        return region

    def _probe_region(self) -> str:
        """A HEAD's 301 has no body to name the region in, and not every server sends the
        header: ask the bucket for an empty listing, whose error body does."""
        try:
            req = self.client.make_request(
                type=S3RequestType.DEFAULT, operation_name="ListObjectsV2",
                request=self._http("GET", None, {"list-type": "2", "max-keys": "0"}, ()))
            req.finished_future.result()
        except S3ResponseError as exc:
            hdrs = {k.lower(): v for k, v in (exc.headers or [])}
            return hdrs.get("x-amz-bucket-region") or s3_xml.parse_error(exc.body).region
        except AwsCrtError:
            pass
        return ""

    def _default(self, op: str, method: str, key: str | None, *, query: dict[str, str] | None = None,
                 headers: Iterable[tuple[str, str]] = (), body: bytes | None = None,
                 accept: frozenset[int] = frozenset()) -> Answer:
        """A DEFAULT meta-request with a small answer (no object bytes)."""
        state: dict[str, Any] = {"status": 0, "headers": {}}
        chunks: list[bytes] = []

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            state["status"], state["headers"] = status_code, {k.lower(): v for k, v in headers}

        def on_body(chunk: Any, offset: int, **_: Any) -> None:
            chunks.append(bytes(chunk))

        def run() -> Answer:
            chunks.clear()
            stream = UploadStream(body) if body is not None else None
            req = self.client.make_request(
                type=S3RequestType.DEFAULT, operation_name=op,
                request=self._http(method, key, query, headers, stream, len(body) if body is not None else None),
                on_headers=on_headers, on_body=on_body)
            try:
                req.finished_future.result()
            except S3ResponseError as exc:
                # The runtime counts only 200/204/206 as success; RestoreObject answers 202.
                if exc.status_code not in accept:
                    raise
                return Answer(exc.status_code, {k.lower(): v for k, v in exc.headers or []}, exc.body or b"")
            return Answer(state["status"], state["headers"], b"".join(chunks))

        return self._call(op, key or "", run)  # type: ignore[no-any-return]

    def _write_headers(self, storage_class: str | None) -> list[tuple[str, str]]:
        out = [("Content-Type", "application/octet-stream")]
        if self.sse:
            out.append(("x-amz-server-side-encryption", self.sse))
            if self.sse == "aws:kms" and self.kms_key_id:
                out.append(("x-amz-server-side-encryption-aws-kms-key-id", self.kms_key_id))
        if storage_class and storage_class != "STANDARD":
            out.append(("x-amz-storage-class", storage_class))
        # The lock's date is taken per request: from the write, not from the job's start.
        out += lock_headers(self.object_lock).items()
        return out

    # --- errors ------------------------------------------------------------------------------

    def _error(self, op: str, key: str, exc: BaseException) -> StoreError:
        where = f"{self.label}/{key}" if key else self.label
        if isinstance(exc, StoreError):
            if exc.key:
                return exc
            # A body that kept breaking off (crt_body): name the operation and key.
            return Incomplete(f"{op} {where}: {exc} (after retries)", code=exc.code, key=key)
        if isinstance(exc, S3ResponseError):
            err = s3_xml.parse_error(exc.body)
            status = exc.status_code or 0
            # HEAD answers have no body: name the status as S3 would.
            code = err.code or {404: "NotFound", 403: "AccessDenied", 301: "PermanentRedirect"}.get(status, str(status))
            text = f"{op} {where}: {code}" + (f": {err.message}" if err.message else f" (HTTP {status})")
            lowered = err.message.lower()
            if code == "InvalidObjectState":
                return Archived(text, code=code, key=key)
            if code in NOT_FOUND or status == 404:
                return NotFound(text, code=code, key=key)
            if status == 403 and any(w in lowered for w in ("retention", "legal hold", "object lock", "locked")):
                return Locked(text, code=code, key=key)
            if code in DENIED or status in (401, 403):
                return Denied(text, code=code, key=key)
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"):
                return Unreachable(f"{text} (after {MAX_ATTEMPTS} attempts)", code=code, key=key)
            return StoreError(text, code=code, key=key)
        if isinstance(exc, AwsCrtError):
            if exc.name.startswith("AWS_AUTH_"):
                return Denied(f"{op} {where}: no usable credentials from the config, the environment, the AWS "
                              f"profile, web identity, the container or the instance profile ({exc.message})",
                              code=exc.name, key=key)
            if exc.name in ("AWS_ERROR_S3_MISSING_ETAG", "AWS_ERROR_S3_MISSING_UPLOAD_ID",
                            "AWS_ERROR_S3_INVALID_RESPONSE_STATUS", "AWS_ERROR_S3_INCORRECT_CONTENT_LENGTH"):
                return Incomplete(f"{op} {where}: {exc.message}", code=exc.name, key=key)
            return Unreachable(f"{op} {where}: no answer from {self._host()}: {exc.message} ({exc.name})",
                               code=exc.name, key=key)
        return StoreError(f"{op} {where}: {type(exc).__name__}: {exc}", key=key)

    def _host(self) -> str:
        return self.endpoint_url or f"https://{self.endpoint.host}"

    @staticmethod
    def _transient(exc: BaseException) -> bool:
        if isinstance(exc, S3ResponseError):
            return (exc.status_code or 0) >= 500
        return isinstance(exc, AwsCrtError) and not exc.name.startswith("AWS_AUTH_")

    # --- Store -----------------------------------------------------------------------------------

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        query = {"list-type": "2", "encoding-type": "url", "prefix": prefix, "max-keys": str(self.list_page_size)}
        if start_after:
            query["start-after"] = start_after
        while True:
            ans = self._default("ListObjectsV2", "GET", None, query=query)
            try:
                page = s3_xml.parse_list(ans.body)
            except ValueError as exc:
                raise Incomplete(f"ListObjectsV2 {self.label}/{prefix}: unreadable answer ({exc})",
                                 key=prefix) from None
            yield from page.objects
            if page.next_token is None:
                return
            query = {**query, "continuation-token": page.next_token}
            query.pop("start-after", None)

    def stat(self, key: str) -> ObjectInfo:
        ans = self._default("HeadObject", "HEAD", key)
        h = ans.headers
        until = h.get("x-amz-object-lock-retain-until-date")
        return ObjectInfo(
            key=key,
            size=int(h.get("content-length", "0") or 0),
            last_modified=s3_xml.parse_time(h.get("last-modified", "")),
            etag=h.get("etag", "").strip('"'),
            storage_class=h.get("x-amz-storage-class", "STANDARD") or "STANDARD",
            restore=h.get("x-amz-restore"),
            lock_mode=h.get("x-amz-object-lock-mode"),
            lock_until=s3_xml.parse_time(until) if until else None,
        )

    def get(self, key: str, start: int = 0, end: int | None = None) -> WindowedBody:
        def fetch(first: int, last: int, if_match: str | None, on_headers: Any, on_body: Any, on_done: Any) -> Any:
            headers = [("Range", f"bytes={first}-{last}")]
            if if_match:
                headers.append(("If-Match", if_match))
            return self.client.make_request(
                type=S3RequestType.DEFAULT, operation_name="GetObject",
                request=self._http("GET", key, None, headers),
                on_headers=on_headers, on_body=on_body, on_done=on_done)

        raw: list[BaseException] = []

        def on_error(exc: BaseException) -> StoreError:
            raw.append(exc)
            return self._error("GetObject", key, exc)

        if end is not None and end <= start:
            end = start
        for redirected in (False, True):
            try:
                return WindowedBody(fetch, start, end, on_error=on_error, transient=self._transient,
                                    window=self.get_window)
            except StoreError as exc:
                if exc.code == "InvalidRange" and start and self.stat(key).size == start:
                    # Starting at the object's end: no bytes, not an error (the 416 said no more,
                    # and not every server names the size in it).
                    return WindowedBody(fetch, start, start, on_error=on_error, transient=self._transient)
                region = self._redirect_region(raw[-1]) if raw and isinstance(raw[-1], S3ResponseError) else ""
                if redirected or not region or region == self.region:
                    raise
                with self._lock:
                    if region != self.region:
                        self._open(region)
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes | Readable, *, sha256: str, storage_class: str | None = None) -> None:
        self._put(key, data, len(data), sha256, storage_class)

    def put_file(self, key: str, fd: int, size: int, *, sha256: str, name: str,
                 storage_class: str | None = None) -> None:
        self._put(key, FileRange(fd, 0, size, name), size, sha256, storage_class)

    def _put(self, key: str, data: bytes | Readable, size: int, sha256: str, storage_class: str | None) -> None:
        # One PUT below two parts, parts of `multipart_chunk_size` from there (the runtime makes
        # them larger only where 10,000 would not hold the object).
        multipart = size >= 2 * self.part_size
        headers = self._write_headers(storage_class)
        checksum = None
        if multipart:
            # Parts carry the SHA-256 the runtime computes of each; the whole object's is checked
            # by the stream before its last byte leaves (crt_body.UploadStream).
            checksum = S3ChecksumConfig(algorithm=S3ChecksumAlgorithm.SHA256, location=S3ChecksumLocation.HEADER)
        else:
            # The algorithm header too, as botocore sends it: S3 wants it (or Content-MD5) on
            # writes under Object Lock retention.
            headers += [("x-amz-checksum-sha256", b64_sha256(sha256)), ("x-amz-sdk-checksum-algorithm", "SHA256")]

        def run() -> None:
            if not isinstance(data, bytes | bytearray | memoryview):
                data.seek(0)
            stream = UploadStream(data, verify_sha256=sha256 if multipart else None, label=f"{self.label}/{key}",
                                  release=self.answered)
            req = self.client.make_request(
                type=S3RequestType.PUT_OBJECT, operation_name="PutObject",
                request=self._http("PUT", key, None, headers, stream, size), checksum_config=checksum,
                # Thresholds either side of `size`, whichever way the runtime compares it.
                part_size=self.part_size,
                multipart_upload_threshold=self.part_size if multipart else 2 * self.part_size)
            try:
                req.finished_future.result()
            except BaseException:
                if stream.error is not None:  # FileShrank, ContentChanged: the caller's to see as such
                    raise stream.error from None
                raise

        self._call("PutObject", key, run)

    def start_multipart(self, key: str, *, storage_class: str | None = None) -> CrtMultipart:
        headers = [*self._write_headers(storage_class), ("x-amz-checksum-algorithm", "SHA256")]
        ans = self._default("CreateMultipartUpload", "POST", key, query={"uploads": ""}, headers=headers)
        upload_id = s3_xml.parse_upload_id(ans.body)
        if not upload_id:
            raise Incomplete(f"CreateMultipartUpload {self.label}/{key}: answer without an UploadId", key=key)
        return CrtMultipart(self, key, upload_id)

    def delete(self, keys: Iterable[str]) -> builtins.list[StoreError]:
        if self.object_lock and self.storage is not None:
            # Every version by its id (see BotoStore.delete): a prune under Object Lock is
            # maintenance work, where boto3's version listing and import cost do not matter.
            from backup_agent.storage.s3_boto import BotoStore

            return BotoStore(self.storage, concurrency=self.concurrency,
                             object_lock=self.object_lock).delete(keys)
        failures: list[StoreError] = []
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                failures += self._delete_batch(batch)
                batch = []
        if batch:
            failures += self._delete_batch(batch)
        return failures

    def _delete_batch(self, keys: builtins.list[str]) -> builtins.list[StoreError]:
        body = s3_xml.delete_body(keys)
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        ans = self._default("DeleteObjects", "POST", None, query={"delete": ""}, body=body,
                            headers=[("Content-MD5", md5), ("Content-Type", "application/xml")])
        try:
            result = s3_xml.parse_delete(ans.body)
        except ValueError:
            raise Incomplete(f"DeleteObjects {self.label}: unreadable answer") from None
        out: list[StoreError] = []
        for key, code, message in result.errors:
            if code in NOT_FOUND:
                continue
            text = f"DeleteObjects {self.label}/{key}: {code}: {message}".rstrip(": ")
            locked = code == "AccessDenied" and any(w in message.lower() for w in ("retention", "hold", "lock"))
            kind = Locked if locked or code == "ObjectLocked" else Denied if code in DENIED else StoreError
            out.append(kind(text, code=code, key=key))
        return out

    def request_restore(self, key: str, *, days: int | None, tier: str) -> bool:
        try:
            self._default("RestoreObject", "POST", key, query={"restore": ""},
                          body=s3_xml.restore_body(days, tier), headers=[("Content-Type", "application/xml")],
                          accept=frozenset({202}))
        except StoreError as exc:
            if exc.code == "RestoreAlreadyInProgress":
                return False
            raise
        return True

    def versioning(self) -> str | None:
        ans = self._default("GetBucketVersioning", "GET", None, query={"versioning": ""})
        return s3_xml.parse_versioning(ans.body)


class CrtMultipart:
    """A streamed multipart upload: parts arrive from the caller with their SHA-256."""

    def __init__(self, store: CrtStore, key: str, upload_id: str) -> None:
        self.store, self.key, self.upload_id = store, key, upload_id
        self.parts: dict[int, tuple[str, str]] = {}

    def upload_part(self, number: int, data: bytes, sha256: str) -> None:
        sha = b64_sha256(sha256)
        ans = self.store._default(
            "UploadPart", "PUT", self.key, query={"partNumber": str(number), "uploadId": self.upload_id},
            headers=[("x-amz-checksum-sha256", sha)], body=bytes(data))
        etag = ans.headers.get("etag", "")
        if not etag:
            raise Incomplete(f"UploadPart {self.store.label}/{self.key}: part {number} answered without an ETag",
                             key=self.key)
        self.parts[number] = (etag, sha)

    def complete(self) -> None:
        parts = [(n, *self.parts[n]) for n in sorted(self.parts)]
        ans = self.store._default("CompleteMultipartUpload", "POST", self.key, query={"uploadId": self.upload_id},
                                  body=s3_xml.complete_body(parts), headers=[("Content-Type", "application/xml")])
        # S3 can answer 200 with an <Error> body when completing fails late.
        err = s3_xml.parse_error(ans.body)
        if err.code:
            raise StoreError(f"CompleteMultipartUpload {self.store.label}/{self.key}: {err.code}: {err.message}",
                             code=err.code, key=self.key)

    def abort(self) -> None:
        with contextlib.suppress(NotFound):  # already gone: what abort wanted
            self.store._default("AbortMultipartUpload", "DELETE", self.key, query={"uploadId": self.upload_id})
