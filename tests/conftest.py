import importlib
import tempfile

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from accounts.services import api_key_create
from agents.services import agent_create
from billing.plans import UNLIMITED, plan_set
from routing import snapshot
from routing.models import Tier

from .emulators import AnthropicEmulator, OllamaEmulator
from .processes import RedisServer, stack_env

_seed = importlib.import_module("routing.migrations.0002_seed_catalog").seed
_seed_limits = importlib.import_module("routing.migrations.0004_tier_rate_limits").seed_limits


@pytest.fixture(autouse=True)
def _fresh_rules_snapshot():
    # Each test's database starts over; so must every process-wide cache of it.
    snapshot.invalidate()
    yield
    snapshot.invalidate()


@pytest.fixture
def catalog(settings):
    """The seeded tiers and catalog of CONTRACT section 4. A transactional test's flush empties
    every table, migration data included, so seed again when they are gone.

    Edits inside a test never commit, so the snapshot's on-commit invalidation does not fire:
    tests check the rules revision on every call instead."""
    settings.RULES_REFRESH_SECS = 0
    if not Tier.objects.exists():
        _seed(apps, None)
        _seed_limits(apps, None)
    snapshot.invalidate()


@pytest.fixture(scope="session")
def anthropic_emulator():
    emulator = AnthropicEmulator("anthropic")
    yield emulator
    emulator.close()


@pytest.fixture(scope="session")
def ollama_emulator():
    emulator = OllamaEmulator("ollama")
    yield emulator
    emulator.close()


@pytest.fixture
def providers(settings, anthropic_emulator, ollama_emulator):
    """Point the runners at the emulators, with fast retries for tests."""
    anthropic_emulator.reset()
    ollama_emulator.reset()
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    settings.ANTHROPIC_BASE_URL = anthropic_emulator.url
    settings.OLLAMA_BASE_URL = ollama_emulator.url
    settings.PROVIDER_BACKOFF_BASE_SECS = 0.01
    settings.CANCEL_POLL_SECS = 0.02
    return anthropic_emulator, ollama_emulator


@pytest.fixture
def make_user(catalog):
    counter = iter(range(1, 10_000))

    def make(tier="m1", username=None, **quotas):
        user = get_user_model().objects.create(username=username or f"user{next(counter)}-{tier}")
        # The seeded rate limits (CONTRACT section 11) lifted, unless the test sets them: tests of
        # other rules admit more runs at once than a tier's handful; tests of the limits set them.
        quotas.setdefault("requests_per_minute", UNLIMITED)
        quotas.setdefault("max_concurrent_runs", UNLIMITED)
        plan_set(user=user, tier_slug=tier, **quotas)
        return user

    return make


@pytest.fixture
def make_client(make_user):
    def make(tier="m1", user=None, **quotas):
        user = user or make_user(tier, **quotas)
        key, raw = api_key_create(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        client.user, client.key = user, key
        return client

    return make


@pytest.fixture
def make_agent():
    def make(user, **fields):
        return agent_create(owner=user, name=fields.pop("name", "agent"), **fields)

    return make


STALE_SECS = 3  # the clusters' heartbeat staleness: a dead worker's runs are taken over after it


@pytest.fixture
def cluster(django_db_setup, anthropic_emulator, ollama_emulator):
    """Env for worker and beat processes on the test database and a Redis of their own."""
    anthropic_emulator.reset()
    ollama_emulator.reset()
    broker = RedisServer()
    env = stack_env(
        broker_url=broker.url,
        anthropic=anthropic_emulator,
        ollama=ollama_emulator,
        MASCHINA_HEARTBEAT_STALE_SECS=str(STALE_SECS),
        MASCHINA_SWEEP_INTERVAL_SECS="1",
        MASCHINA_SWEEP_REDISPATCH_AFTER_SECS="3",
    )
    processes = []
    state = {
        "env": env,
        "log_dir": tempfile.mkdtemp(prefix="maschina-faults-logs-"),
        "broker": broker,
        "processes": processes,
    }
    yield state
    for process in processes:
        process.stop()
    broker.stop()
