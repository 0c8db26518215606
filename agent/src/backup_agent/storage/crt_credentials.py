"""Where CrtStore's credentials and endpoint settings come from, resolved by awscrt in C.

Order (botocore's, so a node behaves the same whichever client reads its settings):
1. the config's `access_key_id`/`secret_access_key`/`session_token`;
2. the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN or the legacy
   AWS_SECURITY_TOKEN (aws-c-auth's environment provider reads only AWS_SESSION_TOKEN, so this
   step is ours: one static provider from what the environment says when the store opens);
3. awscrt's default chain: the shared profile (~/.aws/credentials and ~/.aws/config, AWS_PROFILE,
   role_arn/source_profile, credential_process), STS web identity (AWS_WEB_IDENTITY_TOKEN_FILE +
   AWS_ROLE_ARN), the ECS container endpoint, then the EC2 instance profile over IMDSv2. aws-c-auth's
   IMDS client honours AWS_EC2_METADATA_SERVICE_ENDPOINT and AWS_EC2_METADATA_DISABLED, so tests
   point it at a loopback IMDSv2; no Python delegate is needed, and refreshing before expiry is
   aws-c-auth's (cached provider) too.

Endpoint settings from the profile and the environment (what botocore would honour):
`ca_bundle`/AWS_CA_BUNDLE, `s3 = addressing_style = path|virtual|auto`,
`use_fips_endpoint`/AWS_USE_FIPS_ENDPOINT, `use_dualstack_endpoint`/AWS_USE_DUALSTACK_ENDPOINT.
FIPS and dual-stack apply to AWS endpoints only; with a custom `endpoint_url` they are refused
with one line (an operator asking for FIPS must not silently get a non-FIPS endpoint).
Proxies (HTTPS_PROXY) are not applied: refused with one line too.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from awscrt.auth import AwsCredentialsProvider
from awscrt.io import ClientBootstrap

from backup_agent.config import Storage
from backup_agent.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """Endpoint settings that do not come from the agent's config file."""

    ca_bundle: str | None = None
    addressing_style: str = "auto"
    fips: bool = False
    dualstack: bool = False


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def profile_section(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current profile's settings in ~/.aws/config (AWS_CONFIG_FILE, AWS_PROFILE)."""
    env = os.environ if environ is None else environ
    path = Path(env.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config").expanduser()
    name = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable AWS config file: {str(exc).splitlines()[0]}") from None
    for section in (name, f"profile {name}"):
        if parser.has_section(section):
            return {k: v for k, v in parser.items(section)}
    return {}


def _nested(value: str) -> dict[str, str]:
    """`s3 =\\n  addressing_style = path` → {'addressing_style': 'path'}."""
    out: dict[str, str] = {}
    for line in value.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip().lower()] = v.strip()
    return out


def settings(storage: Storage, environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    prof = profile_section(env)
    style = _nested(prof.get("s3", "")).get("addressing_style", "auto").lower()
    if style not in ("auto", "path", "virtual"):
        raise ConfigError(f"AWS config: s3 addressing_style {style!r} is not auto, path or virtual")
    s = Settings(
        ca_bundle=env.get("AWS_CA_BUNDLE") or prof.get("ca_bundle") or None,
        addressing_style=style,
        fips=_truthy(env.get("AWS_USE_FIPS_ENDPOINT") or prof.get("use_fips_endpoint")),
        dualstack=_truthy(env.get("AWS_USE_DUALSTACK_ENDPOINT") or prof.get("use_dualstack_endpoint")),
    )
    if storage.endpoint_url and (s.fips or s.dualstack):
        raise ConfigError("storage.endpoint_url is set: FIPS/dual-stack endpoint settings of the AWS "
                          "profile or environment cannot apply to a custom endpoint; unset one of them")
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        if env.get(proxy) and not _no_proxy(storage, env):
            raise ConfigError(f"{proxy} is set: the S3 runtime does not go through proxies; "
                              "unset it for the agent or add the endpoint to NO_PROXY")
    if s.ca_bundle and not Path(s.ca_bundle).expanduser().is_file():
        raise ConfigError(f"ca_bundle {s.ca_bundle}: no such file")
    return s


def _no_proxy(storage: Storage, env: Mapping[str, str]) -> bool:
    hosts = [h.strip().lstrip(".") for h in (env.get("NO_PROXY") or env.get("no_proxy") or "").split(",") if h.strip()]
    if "*" in hosts:
        return True
    target = storage.endpoint_url or "amazonaws.com"
    return any(h and h in target for h in hosts)


def provider(storage: Storage, bootstrap: ClientBootstrap,
             environ: Mapping[str, str] | None = None) -> tuple[AwsCredentialsProvider, str]:
    """The credentials provider and a word for messages: static, environment or default-chain."""
    env = os.environ if environ is None else environ
    if storage.access_key_id and storage.secret_access_key:
        return (AwsCredentialsProvider.new_static(storage.access_key_id, storage.secret_access_key,
                                                  storage.session_token or None), "config")
    if storage.access_key_id or storage.secret_access_key:
        raise ConfigError("storage: access_key_id and secret_access_key go together; one of them is missing")
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
        return AwsCredentialsProvider.new_static(key, secret, token), "environment"
    return AwsCredentialsProvider.new_default_chain(bootstrap), "default chain"
