"""The EC2 instance metadata service, IMDSv2 only: which instance, region and zone this node is.

IMDSv1 (token-less GETs) is refused on purpose: it is what SSRF attacks read credentials through,
and AWS recommends `HttpTokens=required`. A metadata server without the token endpoint is reported
as such rather than quietly used.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import requests

from backup_agent.config import IMDS_ENDPOINT_ENV

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL = 300
# The link-local service answers in milliseconds on EC2; elsewhere nothing answers, and a
# node that is not on EC2 should learn so in seconds, not minutes.
TIMEOUT = (1.0, 2.0)
ATTEMPTS = 3


class ImdsError(Exception):
    """Base: the metadata service cannot tell us who we are."""


class ImdsUnavailable(ImdsError):
    """Nothing answers (not on EC2, metadata disabled, or a container beyond the hop limit)."""


class ImdsV1Only(ImdsError):
    """A metadata service answers but offers no IMDSv2 session tokens."""


@dataclass(frozen=True)
class Identity:
    instance_id: str
    region: str
    availability_zone: str


class Imds:
    def __init__(self, endpoint: str | None = None, *, timeout: tuple[float, float] = TIMEOUT,
                 attempts: int = ATTEMPTS, backoff: float = 0.2) -> None:
        # Without an endpoint of its own, the one the AWS SDKs would use (the config's
        # aws.imds_endpoint is exported there: Config.share_imds_endpoint).
        self.endpoint = (endpoint or os.environ.get(IMDS_ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.http = requests.Session()
        # An HTTP(S)_PROXY from the environment must never see metadata requests.
        self.http.trust_env = False
        self._token: str | None = None

    # --- transport -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, headers: dict[str, str]) -> requests.Response:
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                resp = self.http.request(method, self.endpoint + path, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:
                last = exc
            else:
                if resp.status_code < 500:
                    return resp
                last = ImdsError(f"HTTP {resp.status_code}")
            if attempt + 1 < self.attempts:
                time.sleep(self.backoff * 2**attempt)
        raise ImdsUnavailable(f"no instance metadata service answers at {self.endpoint} "
                              f"({_short(last)})")

    def token(self) -> str:
        if self._token is None:
            resp = self._request("PUT", "/latest/api/token",
                                 {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)})
            if resp.status_code in (404, 405):
                raise ImdsV1Only(f"the metadata service at {self.endpoint} offers no IMDSv2 token "
                                 f"(PUT /latest/api/token: HTTP {resp.status_code}); the agent does not "
                                 "use IMDSv1")
            if resp.status_code != 200 or not resp.text:
                raise ImdsUnavailable(f"the metadata service at {self.endpoint} refused a token "
                                      f"(HTTP {resp.status_code}; is it disabled for this instance?)")
            self._token = resp.text.strip()
        return self._token

    def get(self, path: str) -> str | None:
        """The text at `path` under /latest/, or None when the service has no such entry."""
        for fresh in (False, True):
            if fresh:
                self._token = None  # expired or rotated: one new token, then give up
            resp = self._request("GET", "/latest/" + path.lstrip("/"),
                                 {"X-aws-ec2-metadata-token": self.token()})
            if resp.status_code == 200:
                return resp.text
            if resp.status_code == 404:
                return None
            if resp.status_code != 401:
                break
        raise ImdsUnavailable(f"the metadata service at {self.endpoint} answered GET /latest/{path} "
                              f"with HTTP {resp.status_code}")

    # --- what the agent asks -------------------------------------------------------------------

    def identity(self) -> Identity:
        doc = _parse_document(self.get("dynamic/instance-identity/document"))
        instance_id = doc.get("instanceId") or self._required("meta-data/instance-id")
        region = doc.get("region") or self._required("meta-data/placement/region")
        zone = doc.get("availabilityZone") or self._required("meta-data/placement/availability-zone")
        return Identity(instance_id.strip(), region.strip(), zone.strip())

    def _required(self, path: str) -> str:
        text = self.get(path)
        if not text:
            raise ImdsUnavailable(f"the metadata service at {self.endpoint} has no /latest/{path}")
        return text


def _parse_document(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _short(exc: Exception | None) -> str:
    if isinstance(exc, requests.ConnectTimeout | requests.ReadTimeout):
        # The classic cause on EC2: a container one hop further than the token's hop limit of 1.
        return "timed out; from a container the instance's metadata hop limit must be 2 or more"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or unreachable"
    return str(exc) if exc else "no answer"
