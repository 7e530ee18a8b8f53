"""JSON log lines name the run and the user they are about, in the web tier and in the worker, and a
request's ids never leak into the next request's lines."""

import json
import logging
import uuid

import pytest
from django.conf import settings
from pythonjsonlogger.json import JsonFormatter
from rest_framework.test import APIClient

from maschina.logs import RunContext
from runs.tasks import execute_run

from .emulators import anthropic_error
from .test_execution import start_run  # noqa: F401  (a fixture)


class Lines(logging.Handler):
    """The records of one logger as the JSON lines MASCHINA_LOG_FORMAT=json would print."""

    def __init__(self):
        super().__init__(logging.INFO)
        formatter = settings.LOGGING["formatters"]["json"]
        self.setFormatter(JsonFormatter(formatter["format"], rename_fields=formatter["rename_fields"]))
        self.addFilter(RunContext())
        self.lines: list[dict] = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def lines_of():
    attached = []

    def attach(name):
        handler, logger = Lines(), logging.getLogger(name)
        attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return handler.lines

    yield attach
    for logger, handler, level in attached:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.django_db
def test_a_requests_lines_name_its_user_and_run_and_the_next_request_starts_clean(make_client, lines_of):
    lines = lines_of("django.request")
    client = make_client()
    run_id = uuid.uuid4()
    assert client.get(f"/api/v1/runs/{run_id}").status_code == 404
    assert APIClient().get(f"/api/v1/runs/{run_id}").status_code == 401
    found, anonymous = lines
    assert found["level"] == "WARNING" and found["logger"] == "django.request"
    assert (found["user_id"], found["run_id"]) == (client.user.pk, str(run_id))
    assert (anonymous["user_id"], anonymous["run_id"]) == (None, None)


@pytest.mark.django_db
def test_a_workers_lines_name_the_run_it_executes(start_run, providers, lines_of):  # noqa: F811
    providers[0].queue("claude-haiku-4-5", anthropic_error(529, "overloaded_error"))
    run = start_run(model="claude-haiku-4-5")
    lines = lines_of("runs.execution")
    execute_run(str(run.pk))
    retry = next(line for line in lines if "retrying" in line["message"])
    assert (retry["run_id"], retry["user_id"]) == (str(run.pk), run.user_id)
