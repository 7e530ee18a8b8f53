"""Under ASGI, Django's middleware runs its hooks on the event loop (maschina.loop_middleware): an API
request takes no thread hop for them, and the hooks that may reach the database (a session to save,
messages to store) still run on the request's thread. Django's async test client, loading the
middleware as the ASGI handler does. The admin end to end under uvicorn, with its session, CSRF and
messages, is tests/test_browser.py."""

import asyncio
import json

import pytest
from asgiref import sync
from django.db import connections
from django.test import AsyncClient
from django.test.client import AsyncClientHandler

from accounts.services import api_key_create
from agents.services import agent_create
from billing.plans import plan_set
from maschina.loop_middleware import LoopFormsLoading

pytestmark = pytest.mark.django_db(transaction=True)

HOOKS = ("process_request", "process_view", "process_response")


class Handler(LoopFormsLoading, AsyncClientHandler):
    pass


def loop_client() -> AsyncClient:
    client = AsyncClient()
    client.handler = Handler()
    return client


@pytest.fixture
def hops(monkeypatch):
    """The names of the functions run through a thread-sensitive sync_to_async from now on."""
    seen = []
    made = sync.SyncToAsync.__init__

    def init(self, func, *args, thread_sensitive=True, **kwargs):
        if thread_sensitive:
            seen.append(getattr(func, "__qualname__", type(func).__name__))
        made(self, func, *args, thread_sensitive=thread_sensitive, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__init__", init)
    return seen


def test_an_api_request_under_asgi_takes_no_hop_for_a_middleware_hook(catalog, django_user_model, hops):
    user = django_user_model.objects.create(username="loop")
    plan_set(user=user, tier_slug="m1")
    _, key = api_key_create(user=user)
    agent = agent_create(owner=user, name="loop")
    client, auth = loop_client(), {"authorization": f"Bearer {key}"}

    async def calls():
        listed = await client.get("/api/v1/tiers", headers=auth)
        admitted = await client.post(
            f"/api/v1/agents/{agent.pk}/run",
            data=json.dumps({"input": {"message": "hi"}}),
            content_type="application/json",
            headers=auth,
        )
        return listed, admitted

    listed, admitted = asyncio.run(calls())
    assert listed.status_code == 200, listed.content
    assert admitted.status_code == 202, admitted.content
    assert admitted["X-Frame-Options"] == "DENY"  # the hooks ran, on the loop
    assert admitted["X-Content-Type-Options"] == "nosniff"
    assert not [name for name in hops if name.endswith(HOOKS)], hops


def test_the_session_is_saved_on_the_request_thread(django_user_model, hops):
    django_user_model.objects.create_superuser("root", "root@example.com", "a-password-for-tests")
    client = loop_client()

    async def login():
        try:
            await client.get("/admin/login/")
            return await client.post(
                "/admin/login/?next=/admin/",
                {
                    "username": "root",
                    "password": "a-password-for-tests",
                    "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
                },
            ), await client.get("/admin/")
        finally:  # the admin ran on asgiref's one thread: close its connection, or the database stays in use
            await sync.sync_to_async(connections.close_all)()

    logged_in, index = asyncio.run(login())
    assert logged_in.status_code == 302, logged_in.content
    assert index.status_code == 200
    assert b"Site administration" in index.content
    saved = [name for name in hops if name.endswith("process_response")]
    assert saved and all(name.startswith("SessionMiddleware") for name in saved), hops
