"""Whether a server answers, in seconds rather than a client's minutes of retries.

Used before a run starts by the trackers (an MLflow server, W&B) and by `--pretrained
imagenet` (the Hugging Face hub): one short TCP connection attempt to the host, or to the
proxy HTTP(S)_PROXY routes it through. Dependency-free, like the other private helpers.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from urllib.parse import urlsplit


def proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The (host, port) of the proxy that HTTP(S)_PROXY / NO_PROXY route `host` through."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed proxy: the client itself reports it
        return None
    return (parts.hostname, port) if parts.hostname else None


def connect_problem(address: tuple[str, int], timeout: float) -> str | None:
    """Why `address` does not accept a TCP connection within `timeout` seconds, or None. The
    name lookup counts in the timeout: the attempt runs in a thread, left behind if it hangs."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                outcome.append(None)
        except TimeoutError:
            outcome.append(f"no answer within {timeout:g} s")
        except OSError as exc:
            outcome.append(exc.strerror or str(exc) or type(exc).__name__)

    thread = threading.Thread(target=attempt, daemon=True, name="flexsample-reach")
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"
