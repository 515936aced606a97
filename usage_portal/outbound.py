"""Where the portal may send requests: never to an internal address unless allowed.

An endpoint a user types (an S3-compatible store) could otherwise reach the machine's own
services or a cloud's metadata address (169.254.169.254). ``outbound_url_problem`` resolves
the host and refuses loopback, private, link-local, multicast and reserved addresses, unless
the host is listed in the setting ``USAGE_OUTBOUND_ALLOWED_HOSTS`` (comma-separated host
names or addresses, for a store on the private network such as MinIO).

The check runs when the endpoint is saved and before every use; a DNS name that changes its
answer between the check and the connection is not covered (see the README's operations).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


def _allowed_hosts() -> set[str]:
    return {
        host.strip().lower()
        for host in settings.USAGE_OUTBOUND_ALLOWED_HOSTS.split(",")
        if host.strip()
    }


def outbound_url_problem(url: str) -> str:
    """Why the portal must not send requests to ``url`` ("" when it may)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "The address must start with http:// or https:// and name a host."
    host = parts.hostname.lower()
    if host in _allowed_hosts():
        return ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        answers = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError):
        return f"The host {host} cannot be found (DNS). Check the address."
    for answer in answers:
        address = ipaddress.ip_address(answer[4][0])
        if not address.is_global or address.is_multicast:
            return (
                f"{host} is an internal address ({address}); the portal does not send "
                f"requests there. If this store is meant to be on your private network, an "
                f"operator can allow it with USAGE_OUTBOUND_ALLOWED_HOSTS={host}."
            )
    return ""
