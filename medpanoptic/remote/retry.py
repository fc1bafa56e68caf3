"""Retries with exponential backoff for transient faults, and one clear `RemoteError` otherwise.

Protocol code raises `TransientFault` for what may pass (a node down or restarting, a timeout,
HTTP 5xx/429, a refused association) and `RemoteError` for what will not (bad credentials,
a rejected object); `with_retries` tries a transient one again, waiting 0.5 s, 1 s, 2 s, ...
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from ..errors import RemoteError

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_DELAY_S = 0.5


class TransientFault(Exception):
    """A fault that may pass if we wait: the message says what happened, without secrets."""


def with_retries(call: Callable[[], T], node: str, what: str, retries: int = 3,
                 first_delay_s: float = FIRST_DELAY_S) -> T:
    """`call()`, tried again up to `retries` times on a `TransientFault`; else a `RemoteError` naming `node`."""
    for attempt in range(retries + 1):
        try:
            return call()
        except TransientFault as e:
            if attempt == retries:
                tries = f" (tried {retries + 1} times)" if retries else ""
                raise RemoteError(node, f"{what}: {e}{tries}") from None
            delay = first_delay_s * 2**attempt
            log.info("%s: %s: %s; retrying in %.1f s", node, what, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
