"""Which S3 endpoint a run talks to when the config lists several (`storage.endpoints`).

The gateways of a backup storage cluster (recipe[backup_agent::storage_node]) all serve the
same buckets, so any one that answers will do. The list is ordered (the cookbook puts each
node's preferred gateway first, spreading the fleet over the gateways); a run takes the first
gateway that answers a probe and keeps it for the whole run. A gateway that dies mid-run fails
that run like any S3 outage; the next run (or the daemon's retry) probes again and moves on.

A probe is one unauthenticated `GET /` per endpoint: any HTTP answer below 500 (an S3 gateway
answers 403 AccessDenied or 200 to an anonymous listing) means the gateway is up and its filer
behind it too; a refused connection, a timeout or a 5xx (a gateway whose filer is gone answers
503) means try the next.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from backup_agent.config import Storage
from backup_agent.errors import AgentError

log = logging.getLogger(__name__)

# Short: a live gateway on the same network answers in milliseconds, and every dead one in front
# of a live one costs its whole timeout at the start of each run.
PROBE_TIMEOUT = 3.0


class NoEndpoint(AgentError):
    """No endpoint of storage.endpoints answered: the run cannot start (exit 1, retried later)."""


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when `url` answers like a live S3 gateway, else the reason it does not (one line)."""
    # Here, not at the top: http.client brings ssl and email (~25 ms), and every run imports this
    # module while only nodes with storage.endpoints ever probe.
    import http.client

    parts = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        status = conn.getresponse().status
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except (OSError, http.client.HTTPException) as exc:
        return str(exc) or type(exc).__name__
    finally:
        conn.close()
    return f"HTTP {status}" if status >= 500 else None


def choose(endpoints: Sequence[str], check: Callable[[str], str | None] = probe) -> str:
    """The first of `endpoints` that answers; NoEndpoint naming each one's reason when none does."""
    reasons: list[str] = []
    for url in endpoints:
        reason = check(url)
        if reason is None:
            if reasons:  # say which gateways were skipped: the operator wants to know one is down
                log.warning("storage endpoint %s is used; skipped: %s", url, "; ".join(reasons))
            return url
        reasons.append(f"{url}: {reason}")
    raise NoEndpoint(f"storage.endpoints: none of the {len(reasons)} endpoints answers ({'; '.join(reasons)})")


def resolve(storage: Storage, check: Callable[[str], str | None] = probe) -> Storage:
    """`storage` with endpoint_url set to the chosen endpoint; unchanged when no list is configured.

    The storage factory calls this once per opened store, before it makes any client."""
    if not storage.endpoints:
        return storage
    # The list is spent: a client made from the result (bucket setup after open_store) does not
    # probe again.
    return dataclasses.replace(storage, endpoint_url=choose(storage.endpoints, check), endpoints=())
