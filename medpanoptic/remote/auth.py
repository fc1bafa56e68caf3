"""Credentials and connection settings for DICOM nodes: from the environment or a config file, never the command line.

Environment (wins over the file): `MEDPANOPTIC_PACS_USER` + `MEDPANOPTIC_PACS_PASSWORD` (HTTP
basic) or `MEDPANOPTIC_PACS_TOKEN` (bearer), `MEDPANOPTIC_PACS_CA` (a CA bundle for HTTPS and
DICOM TLS), `MEDPANOPTIC_PACS_CERT` + `MEDPANOPTIC_PACS_KEY` (our certificate and key, for DICOM TLS
nodes that ask for one), `MEDPANOPTIC_PACS_AET` (our AE title). `MEDPANOPTIC_PACS_CONFIG` names a
JSON file with the same settings (`username`, `password`, `token`, `ca_file`, `tls_cert`, `tls_key`,
`calling_aet`, `timeout_s`, `retries`) and
optionally `nodes: {"HOST:PORT": {...}}` for per-node values; a file that holds a secret must
not be readable by others. A `Settings` object never shows its secrets in `repr` or logs.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Mapping

from ..errors import InputError
from .urls import NodeAddress

CONFIG_ENV = "MEDPANOPTIC_PACS_CONFIG"
DEFAULT_AET = "MEDPANOPTIC"
_ENV = {"username": "MEDPANOPTIC_PACS_USER", "password": "MEDPANOPTIC_PACS_PASSWORD",
        "token": "MEDPANOPTIC_PACS_TOKEN", "ca_file": "MEDPANOPTIC_PACS_CA",
        "tls_cert": "MEDPANOPTIC_PACS_CERT", "tls_key": "MEDPANOPTIC_PACS_KEY", "calling_aet": "MEDPANOPTIC_PACS_AET"}
SECRETS = ("password", "token")


@dataclass(frozen=True)
class Settings:
    """How to talk to one node: who we are, how we prove it, how long we wait and how often we retry."""

    username: str | None = None
    password: str | None = None
    token: str | None = None
    ca_file: str | None = None
    tls_cert: str | None = None  # PEM certificate (chain) we present over DICOM TLS
    tls_key: str | None = None  # its private key (PEM), when not in `tls_cert`
    calling_aet: str = DEFAULT_AET
    timeout_s: float = 30.0
    retries: int = 3  # extra attempts for transient faults (node down, timeout, HTTP 5xx), with backoff

    def __repr__(self) -> str:
        shown = {f.name: ("***" if f.name in SECRETS and getattr(self, f.name) else getattr(self, f.name))
                 for f in fields(self)}
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__

    def secrets(self) -> list[str]:
        """The secret values, so that a message can be checked never to contain them."""
        return [v for v in (self.password, self.token) if v]

    def http_auth(self):
        """A `requests` auth object (bearer token or basic), or None."""
        import requests

        if self.token:
            return _Bearer(self.token)
        if self.username is not None:
            return requests.auth.HTTPBasicAuth(self.username, self.password or "")
        return None


class _Bearer:
    """Adds `Authorization: Bearer ...` when a request is sent (never kept in the session's headers)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(***)"


def _read_config(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read the PACS config ({type(e).__name__})") from None
    if not isinstance(document, dict):
        raise InputError(path, "the PACS config must be a JSON object")
    text = json.dumps(document)
    if any(s in text for s in ('"password"', '"token"')) and os.name == "posix":
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(path, "holds a password or token but is readable by others: chmod 600 it")
    return document


def _coerce(source: str, values: Mapping) -> dict:
    known = {f.name: f.type for f in fields(Settings)}
    unknown = sorted(set(values) - set(known) - {"nodes"})
    if unknown:
        raise InputError(source, f"unknown PACS setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out = {}
    for name, value in values.items():
        if name == "nodes":
            continue
        try:
            out[name] = float(value) if name == "timeout_s" else int(value) if name == "retries" else str(value)
        except (TypeError, ValueError):
            raise InputError(source, f"PACS setting {name} has an invalid value") from None
    if out.get("timeout_s", 1.0) <= 0 or out.get("retries", 0) < 0:
        raise InputError(source, "timeout_s must be positive and retries at least 0")
    return out


def load_settings(node: NodeAddress, env: Mapping[str, str] | None = None) -> Settings:
    """The settings for `node`: the config file's general values, its `nodes` entry, then the environment."""
    env = os.environ if env is None else env
    values: dict = {}
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        document = _read_config(path)
        values.update(_coerce(str(path), document))
        per_node = document.get("nodes", {})
        if not isinstance(per_node, dict):
            raise InputError(path, "`nodes` must map HOST:PORT to settings")
        values.update(_coerce(str(path), per_node.get(f"{node.host}:{node.port}", {})))
    values.update(_coerce("environment", {k: env[v] for k, v in _ENV.items() if env.get(v)}))
    settings = replace(Settings(), **values)
    for name, what in (("ca_file", "CA file (MEDPANOPTIC_PACS_CA / ca_file)"),
                       ("tls_cert", "certificate file (MEDPANOPTIC_PACS_CERT / tls_cert)"),
                       ("tls_key", "key file (MEDPANOPTIC_PACS_KEY / tls_key)")):
        value = getattr(settings, name)
        if value and not Path(value).is_file():
            raise InputError(value, f"no such {what}")
    if settings.tls_key and not settings.tls_cert:
        raise InputError(settings.tls_key, "a TLS key needs its certificate (MEDPANOPTIC_PACS_CERT / tls_cert)")
    return settings
