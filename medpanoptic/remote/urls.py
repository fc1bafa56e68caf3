"""Node addresses: `dicomweb://HOST:PORT/PATH`, `dicomwebs://...` (HTTPS), `dimse://AET@HOST:PORT` and
`dimses://...` (DIMSE over TLS).

A query (`?study=UID&series=UID&patient=ID&modality=CT&since=YYYYMMDD`) says which series to
take. Credentials never go in an address: they come from the environment or a config file
(see `auth`), so that they stay out of shell histories, process lists and logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import InputError

QUERY_KEYS = ("study", "series", "patient", "modality", "since")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AET = re.compile(r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")  # no '\\', no controls
_DATE = re.compile(r"^[0-9]{8}$")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")


@dataclass(frozen=True)
class NodeAddress:
    """Where a DICOM node listens and which series a query selects."""

    scheme: str  # "dicomweb", "dicomwebs", "dimse" or "dimses"
    host: str
    port: int
    path: str = ""  # DICOMweb service root, e.g. "/dicom-web"
    aet: str = ""  # DIMSE: the node's (called) AE title
    query: dict = field(default_factory=dict)

    @property
    def is_dicomweb(self) -> bool:
        return self.scheme in ("dicomweb", "dicomwebs")

    @property
    def uses_tls(self) -> bool:
        """Whether the connection is encrypted and the node's certificate checked (`dicomwebs://`, `dimses://`)."""
        return self.scheme in ("dicomwebs", "dimses")

    @property
    def http_url(self) -> str:
        """The DICOMweb service root as an http(s) URL."""
        return f"{'https' if self.scheme == 'dicomwebs' else 'http'}://{self._host_port}{self.path}"

    @property
    def key(self) -> str:
        """The node without its query: how `done.json` and errors name it (it holds no secret)."""
        who = f"{self.aet}@" if self.aet else ""
        return f"{self.scheme}://{who}{self._host_port}{self.path}"

    @property
    def _host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.key + (f"?{urlencode(self.query)}" if self.query else "")


def _check_query(text: str, query: dict) -> dict:
    unknown = sorted(set(query) - set(QUERY_KEYS))
    if unknown:
        raise InputError(text, f"unknown query key(s) {', '.join(unknown)}; use {', '.join(QUERY_KEYS)}")
    for key in ("study", "series"):
        if key in query and (not _UID.match(query[key]) or len(query[key]) > 64):
            raise InputError(text, f"--{key} must be a DICOM UID (digits and dots, at most 64), got {query[key]!r}")
    if "since" in query and not _DATE.match(query["since"]):
        raise InputError(text, f"--since must be a date YYYYMMDD, got {query['since']!r}")
    if "modality" in query and not _MODALITY.match(query["modality"]):
        raise InputError(text, f"--modality must be a DICOM modality such as CT or MR, got {query['modality']!r}")
    if "series" in query and "study" not in query:
        raise InputError(text, "--series needs --study (a series is looked up inside its study)")
    if not query:
        raise InputError(text, "say which series to take: --study UID [--series UID], or --patient/--modality/--since")
    return query


def parse_node(text: str, require_query: bool = True) -> NodeAddress:
    """A `NodeAddress` from `text`, or an `InputError` naming what is wrong with it."""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("dicomweb", "dicomwebs", "dimse", "dimses"):
        raise InputError(text, "a DICOM node address starts with dicomweb://, dicomwebs://, dimse:// or dimses://")
    dimse = scheme in ("dimse", "dimses")
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    if not dimse and userinfo:
        raise InputError(parts.hostname or scheme, "credentials never go in the address; set MEDPANOPTIC_PACS_USER/"
                                                   "_PASSWORD or _TOKEN, or a MEDPANOPTIC_PACS_CONFIG file")
    if dimse and (not userinfo or not _AET.match(userinfo)):
        raise InputError(f"{scheme}://{hostport}", "a DIMSE address is dimse://AET@HOST:PORT with an AE title of "
                                                "1-16 printable characters (no backslash)")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise InputError(f"{scheme}://{hostport}", "a DICOM node address needs HOST:PORT")
    if dimse and parts.path not in ("", "/"):
        raise InputError(text, "a DIMSE address has no path: dimse://AET@HOST:PORT")
    query = dict(parse_qsl(parts.query, keep_blank_values=False))
    if require_query:
        _check_query(text, query)
    elif query:
        raise InputError(text, "a --store address takes no query: results go back into their own study")
    return NodeAddress(scheme, parts.hostname, port, "" if dimse else parts.path.rstrip("/"),
                       userinfo if dimse else "", query)


def with_query(text: str, **filters: str | None) -> str:
    """`text` with the given query filters added (those set to None are left out)."""
    extra = {k: v for k, v in filters.items() if v}
    if not extra:
        return text
    return text + ("&" if "?" in text else "?") + urlencode(extra)
