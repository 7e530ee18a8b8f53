"""Deployment hardening: the HTTPS settings come from the environment so `check --deploy` can be
clean; the admin login is throttled (django-axes); a bad Host header is one WARNING line."""

import logging
import secrets
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from .processes import ROOT, base_env

DEPLOY_ENV = {
    "SECURE_SSL_REDIRECT": "1",
    "SESSION_COOKIE_SECURE": "1",
    "CSRF_COOKIE_SECURE": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "CSRF_TRUSTED_ORIGINS": "https://maschina.example,https://admin.maschina.example",
}


def check_deploy(**env):
    env = base_env(SECRET_KEY=secrets.token_urlsafe(60), **env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deployment_settings_from_the_environment_make_check_deploy_clean():
    result = check_deploy(**DEPLOY_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout + result.stderr
    # Without them, the warnings the settings answer.
    bare = check_deploy()
    assert bare.returncode != 0
    for warning in ("W004", "W008", "W012", "W016"):
        assert warning in bare.stdout + bare.stderr


def test_deployment_settings_are_read_as_given():
    script = (
        "from django.conf import settings as s;"
        "print(s.SECURE_PROXY_SSL_HEADER, s.CSRF_TRUSTED_ORIGINS,"
        " s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT)"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=ROOT,
        env=base_env(DJANGO_SETTINGS_MODULE="maschina.settings", **DEPLOY_ENV),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip().splitlines()[-1] == (
        "('HTTP_X_FORWARDED_PROTO', 'https') "
        "['https://maschina.example', 'https://admin.maschina.example'] 31536000 True"
    ), result.stderr


@pytest.mark.django_db
def test_admin_login_throttling_refuses_the_nth_bad_login_even_with_the_right_password(settings):
    get_user_model().objects.create_superuser("root", "root@example.com", "right-password")
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post("/admin/login/", {"username": "root", "password": "wrong"})
        assert response.status_code == 200 and "_auth_user_id" not in client.session
    locked = client.post("/admin/login/", {"username": "root", "password": "wrong"})
    assert locked.status_code == 429
    response = client.post("/admin/login/?next=/admin/", {"username": "root", "password": "right-password"})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302  # still sent to the login page

    # Another username from the same address is not locked out by root's failures.
    get_user_model().objects.create_superuser("ops", "ops@example.com", "ops-password")
    other = client.post("/admin/login/?next=/admin/", {"username": "ops", "password": "ops-password"})
    assert other.status_code == 302 and client.session["_auth_user_id"]


@pytest.mark.django_db
def test_a_bad_host_header_is_one_warning_line(caplog):
    with caplog.at_level(logging.INFO):
        response = Client(HTTP_HOST="evil.example").get("/api/v1/tiers")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    records = [r for r in caplog.records if r.name.startswith("django.security")]
    assert len(records) == 1, records
    (record,) = records
    assert (record.levelno, record.exc_info, record.exc_text) == (logging.WARNING, None, None)
    assert "evil.example" in record.getMessage() and "\n" not in record.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
