"""Where an alert webhook may be sent (CONTRACT section 14): `http` or `https` only; never to an
address that is link-local (169.254.169.254 is a cloud's metadata service), multicast or unspecified;
to a loopback or private one only with MASCHINA_WEBHOOK_ALLOW_PRIVATE=1.

The URL is checked when it is set and again at every delivery, against the addresses its host
resolves to then; the delivery connects to the address it checked (so a name that resolves to
something else a moment later, DNS rebinding, gains nothing) and follows no redirect: a 3xx is a
failed attempt. urllib3 (under requests already) connects to the address while TLS still verifies
the certificate for the URL's host name."""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests.certs
import urllib3
from django.conf import settings


class TargetRefused(Exception):
    """The URL may not be a webhook; the message says why, in one sentence."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # the URL's host name (or address), without brackets
    port: int
    path: str  # path and query, as sent in the request line
    host_header: str


def target_of(url: str) -> Target:
    """The URL's parts; TargetRefused if it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefused("The webhook URL is not a valid URL.")
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("The webhook URL must be http or https.")
    if not parts.hostname:
        raise TargetRefused("The webhook URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("The webhook URL must not hold credentials.")
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return Target(
        scheme=parts.scheme,
        host=host,
        port=port or (443 if parts.scheme == "https" else 80),
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        host_header=shown if port is None else f"{shown}:{port}",
    )


def address_problem(address: str) -> str | None:
    """Why a webhook may not go to this IP address, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_multicast or ip.is_unspecified:
        return f"{ip} is not a unicast address"
    if not ip.is_global and not settings.WEBHOOK_ALLOW_PRIVATE:  # loopback, private, reserved
        return f"{ip} is a loopback or private address"
    return None


def resolved_addresses(target: Target) -> list[str]:
    infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_address(target: Target) -> str:
    """The address to connect to: the host's first, once every address it resolves to is allowed
    (a name that answers with one allowed and one refused address is refused)."""
    try:
        addresses = resolved_addresses(target)
    except (OSError, UnicodeError):
        raise TargetRefused(f"The webhook host {target.host} does not resolve.")
    for address in addresses:
        problem = address_problem(address)
        if problem:
            raise TargetRefused(f"The webhook host {target.host} resolves to {problem}.")
    return addresses[0]


def url_validate(url: str) -> None:
    """TargetRefused unless `url` may be a webhook now. A host name that does not resolve at this
    moment is let through (DNS may be down; the delivery checks again); a literal address is not."""
    target = target_of(url)
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        try:
            addresses = resolved_addresses(target)
        except (OSError, UnicodeError):
            return
        for address in addresses:
            problem = address_problem(address)
            if problem:
                raise TargetRefused(f"The webhook host {target.host} resolves to {problem}.")
        return
    problem = address_problem(target.host)
    if problem:
        raise TargetRefused(f"The webhook URL's address {problem}.")


def webhook_post(url: str, body: bytes, headers: dict, timeout: float) -> int:
    """POST `body` to the checked address of `url`; the answer's status, redirects not followed.
    TargetRefused, or urllib3's HTTPError when the request fails."""
    target = target_of(url)
    address = checked_address(target)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address,
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=requests.certs.where(),  # type: ignore[attr-defined]  # requests re-exports certifi
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={"Host": target.host_header, **headers},
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
        )
        return response.status
    finally:
        pool.close()
