"""CONTRACT section 14: webhook URLs are http or https; a host resolving to a link-local address is
always refused, one resolving to a loopback or private address unless MASCHINA_WEBHOOK_ALLOW_PRIVATE=1,
checked when the URL is set and again at delivery against the address connected to; redirects are
not followed, a 3xx is a failed attempt."""

import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import transaction

from billing import webhook_targets
from billing.alerts import alerts_record
from billing.models import Alert, Plan
from billing.webhooks import alert_deliver, webhook_set

from .test_quota import PERIOD, Receiver

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://[::1]:6379/",
        "http://localhost:5432/",
        "http://127.0.0.1:8000/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://172.16.0.5/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "https://user:pw@hooks.example.com/x",
        "http:///nohost",
    ],
)
def test_webhook_targets_refused_when_set(make_user, url):
    user = make_user("m1")
    with pytest.raises(ValidationError):
        webhook_set(plan=user.plan, url=url)
    with pytest.raises(CommandError):
        call_command("set_alert_webhook", user.username, url, stdout=io.StringIO())
    assert Plan.objects.get(pk=user.plan.pk).alert_webhook_url == ""


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("http://127.0.0.1:8000/hook", True),
        ("http://localhost:5432/", True),
        ("http://10.0.0.1/hook", True),
        ("http://[::1]:6379/", True),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("http://[fe80::1]/x", False),
    ],
)
def test_private_targets_allowed_by_the_switch_but_never_link_local(make_user, settings, url, allowed):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    user = make_user("m1")
    if allowed:
        webhook_set(plan=user.plan, url=url)
        assert Plan.objects.get(pk=user.plan.pk).alert_webhook_url == url
    else:
        with pytest.raises(ValidationError):
            webhook_set(plan=user.plan, url=url)


def _alert(user):
    with transaction.atomic():
        (alert,) = alerts_record(user_id=user.pk, period=PERIOD, quota="runs", used=400, limit=500)
    return alert


def test_delivery_checks_the_resolved_address_again_dns_rebinding(make_user, settings, monkeypatch):
    """A name that resolved to a public address when set and to a private one at delivery is refused
    then, and nothing is sent."""
    receiver = Receiver()
    try:
        user = make_user("m1")
        port = receiver.server.server_address[1]
        answers = {"rebind.test": "93.184.216.34"}  # public when the URL is set
        real = socket.getaddrinfo

        def fake_getaddrinfo(host, port, *args, **kwargs):
            if host in answers:
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(webhook_targets.socket, "getaddrinfo", fake_getaddrinfo)
        webhook_set(plan=user.plan, url=f"http://rebind.test:{port}/hooks")
        answers["rebind.test"] = "127.0.0.1"  # and loopback when the alert goes out
        alert = _alert(user)
        assert alert_deliver(alert.pk) is False
        alert.refresh_from_db()
        assert alert.last_delivery_status.startswith("refused: ")
        assert "127.0.0.1 is a loopback or private address" in alert.last_delivery_status
        assert receiver.requests == []

        # Allowed once the operator says so: it connects to the address it checked, with the
        # URL's own Host header.
        settings.WEBHOOK_ALLOW_PRIVATE = True
        assert alert_deliver(alert.pk) is True
        headers, _ = receiver.requests[-1]
        assert headers["Host"] == f"rebind.test:{port}"
    finally:
        receiver.close()


class Redirector:
    """Answers every POST with a redirect to `location`; counts what reaches `location`'s server."""

    def __init__(self, status, location):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.requests.append(self.path)
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_webhook_redirects_are_not_followed(make_user, settings, status):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    target = Receiver()
    redirector = Redirector(status, target.url)
    try:
        user = make_user("m1")
        webhook_set(plan=user.plan, url=redirector.url)
        alert = _alert(user)
        assert alert_deliver(alert.pk) is False
        alert = Alert.objects.get(pk=alert.pk)
        assert (alert.delivered_at, alert.last_delivery_status) == (None, f"HTTP {status}")
        assert len(redirector.requests) == 1 and target.requests == []
    finally:
        redirector.close()
        target.close()


def test_the_admin_form_refuses_a_link_local_webhook(make_user, admin_client):
    user = make_user("m1")
    form = {"user": user.pk, "tier": "m1", "token_quota_override": "", "run_quota_override": ""}
    response = admin_client.post(
        f"/admin/billing/plan/{user.plan.pk}/change/",
        {**form, "alert_webhook_url": "http://169.254.169.254/latest/"},
    )
    assert response.status_code == 200  # the form again, with its error
    assert b"link-local address" in response.content
    assert Plan.objects.get(pk=user.plan.pk).alert_webhook_url == ""
