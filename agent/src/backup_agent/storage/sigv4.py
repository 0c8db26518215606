"""AWS Signature Version 4 in the Authorization header, for the direct S3 client.

https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
Only what S3 requests need: the canonical URI is encoded once (S3 does not want it twice) and
every header we send except Content-Length and User-Agent is signed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# The body is not part of the signature: its integrity comes from x-amz-checksum-sha256, a signed
# header the server checks, so the bytes are not hashed a second time for the signature.
UNSIGNED = "UNSIGNED-PAYLOAD"
UNSIGNED_HEADERS = frozenset({"content-length", "user-agent", "expect"})


def uri_encode(text: str, *, path: bool = False) -> str:
    """RFC 3986 encoding as SigV4 wants it: everything but A-Z a-z 0-9 - _ . ~ (and / in paths)."""
    return quote(text, safe="/~" if path else "~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class Signer:
    def __init__(self, access_key: str, secret_key: str, session_token: str | None, region: str,
                 service: str = "s3") -> None:
        self.access_key, self.session_token = access_key, session_token
        self.region, self.service = region, service
        self._secret = secret_key
        self._day_key: tuple[str, str, bytes] = ("", "", b"")  # day, region, signing key

    def __repr__(self) -> str:  # never the secret, even in a traceback's locals
        return f"Signer({self.access_key[:4]}…, {self.region})"

    def _key(self, day: str) -> bytes:
        if self._day_key[:2] != (day, self.region):
            k = _hmac(("AWS4" + self._secret).encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                k = _hmac(k, part)
            self._day_key = (day, self.region, k)
        return self._day_key[2]

    def sign(self, method: str, host: str, encoded_path: str, query: dict[str, str], headers: dict[str, str],
             payload_sha256: str = UNSIGNED, now: float | None = None) -> dict[str, str]:
        """The headers to send: `headers` plus Host, X-Amz-Date, X-Amz-Content-Sha256, the session
        token if any, and Authorization. `encoded_path` is the path as it goes on the request line."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = amz_date[:8]
        out = {k.lower(): str(v).strip() for k, v in headers.items()}
        out.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256})
        if self.session_token:
            out["x-amz-security-token"] = self.session_token
        signed = sorted(k for k in out if k not in UNSIGNED_HEADERS)
        canonical_headers = "".join(f"{k}:{' '.join(out[k].split())}\n" for k in signed)
        signed_names = ";".join(signed)
        canonical_query = "&".join(f"{uri_encode(k)}={uri_encode(v)}"
                                   for k, v in sorted(query.items()))
        canonical = "\n".join((method, encoded_path, canonical_query, canonical_headers, signed_names,
                               payload_sha256))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.new(self._key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                f"SignedHeaders={signed_names}, Signature={signature}")
        return out
