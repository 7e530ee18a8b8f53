"""CONTRACT section 1: every error the product can shape is JSON, the schema and docs endpoints
included (their renderers are YAML and HTML)."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "method, path, headers, status",
    [
        ("get", "/api/schema/?format=xml", {}, 404),
        ("post", "/api/schema/", {}, 405),
        ("put", "/api/schema/", {}, 405),
        ("get", "/api/schema/", {"HTTP_ACCEPT": "text/html"}, 406),
        ("get", "/api/docs/?format=xml", {}, 404),
        ("post", "/api/docs/", {}, 405),
        ("get", "/api/v1/tiers?format=xml", {}, 404),
        ("get", "/api/v1/tiers", {"HTTP_ACCEPT": "text/html"}, 406),
        ("delete", "/api/v1/tiers", {}, 401),  # auth first, as JSON
        ("get", "/nowhere", {}, 404),
    ],
)
def test_errors_that_were_not_json_are_json(catalog, method, path, headers, status):
    response = getattr(Client(), method)(path, **headers)
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    assert set(response.json()["error"]) >= {"code", "message"}


def test_the_schema_itself_still_comes_as_yaml_and_json(catalog):
    assert Client().get("/api/schema/").content.startswith(b"openapi: 3")
    assert Client().get("/api/schema/?format=json").json()["openapi"].startswith("3")
