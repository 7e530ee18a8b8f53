"""docker-compose.yml and the Dockerfile, checked without Docker (it does not run here): the file
against the Compose Specification's JSON schema (tests/compose-spec.json, from
github.com/compose-spec/compose-spec, schema/compose-spec.json, Apache-2.0, which `docker compose
config` validates against too), and what `docker compose config` would resolve (merge keys,
variables, dependencies) against what the README says to run."""

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from .processes import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # resolves the `<<: *app` merges
SERVICES = COMPOSE["services"]
APP = ("migrate", "web", "worker", "sweeper", "beat")  # the services run from the project's image
LONG_RUNNING = ("postgres", "redis", "web", "worker", "sweeper", "beat")
WEB = "gunicorn maschina.asgi:application -k uvicorn_worker.UvicornWorker --workers 2 --bind 0.0.0.0:8000"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; $$ is a literal $.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])[^}]*)?\}")


def command(service) -> str:
    cmd = SERVICES[service]["command"]
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def readme_block(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_file_is_valid_against_the_compose_specification():
    schema = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(COMPOSE)
    broken = {**COMPOSE, "services": {**SERVICES, "web": {**SERVICES["web"], "depend_on": ["migrate"]}}}
    assert not validator.is_valid(broken)  # the schema does check what it is given
    broken["services"]["web"] = {**SERVICES["web"], "depends_on": {"migrate": {"condition": "done"}}}
    assert not validator.is_valid(broken)


def test_every_variable_is_well_formed_and_only_secret_key_is_required():
    text = (ROOT / "docker-compose.yml").read_text()
    without_literals = text.replace("$$", "")
    for stray in re.finditer(r"\$(?!\{)", without_literals):
        raise AssertionError(f"a bare $ at {stray.start()}: write $$ or ${{NAME}}")
    required = {m.group(1) for m in VARIABLE.finditer(without_literals) if m.group(2) in (":?", "?")}
    assert required == {"SECRET_KEY"}
    assert without_literals.count("${") == len(VARIABLE.findall(without_literals))


def test_services_images_and_dependencies():
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    assert SERVICES["redis"]["image"].startswith("redis:")
    for name in APP:  # one image, built from the Dockerfile, for every process of the project
        assert (SERVICES[name]["build"], SERVICES[name]["image"]) == (".", "maschina:latest"), name
    for name, service in SERVICES.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            assert dependency != name
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], (name, dependency)
            elif condition["condition"] == "service_completed_successfully":
                assert SERVICES[dependency]["restart"] == "no", (name, dependency)
    for name in ("web", "worker", "sweeper", "beat"):  # nothing starts before the schema is there
        assert SERVICES[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert SERVICES[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert SERVICES[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert set(SERVICES["migrate"]["depends_on"]) == {"postgres"}


def test_restarts_health_checks_and_no_install_at_start():
    for name in LONG_RUNNING:
        assert SERVICES[name]["restart"] == "unless-stopped", name
    for name in ("postgres", "redis", "web", "worker", "sweeper"):
        assert SERVICES[name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(SERVICES["web"]["healthcheck"]["test"])
    assert SERVICES["worker"]["stop_grace_period"] == "2m"  # a stopping node lets its runs end
    for name in APP:
        assert "pip" not in command(name), name  # installed once, in the image


def test_commands_are_the_documented_ones():
    assert command("web") == WEB
    assert command("worker").startswith("celery -A maschina worker -Q maschina ")
    assert "-Q maschina.sweep" in command("sweeper") and "-n sweeper@%h" in command("sweeper")
    assert command("beat").startswith("celery -A maschina beat")
    assert "python manage.py migrate --noinput" in command("migrate")
    # The worker health checks ping the node names the commands give.
    for name, node in (("worker", "worker"), ("sweeper", "sweeper")):
        assert f"-n {node}@%h" in command(name)
        assert f"-d {node}@$$HOSTNAME" in SERVICES[name]["healthcheck"]["test"][1]  # $$: the shell's $
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert shlex.join(cmd) == WEB
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"`{WEB}`" in operations


def test_provider_variables_are_passed_only_when_set():
    environment = SERVICES["web"]["environment"]
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "MASCHINA_METRICS_TOKEN"):
        assert name in environment and environment[name] is None, name  # a bare name: set, or absent
    assert SERVICES["web"]["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert environment["OLLAMA_BASE_URL"] == "${OLLAMA_BASE_URL:-http://host.docker.internal:11434}"
    assert "SECRET_KEY" in environment and environment["DATABASE_URL"].endswith("@postgres:5432/maschina")
    assert environment["CELERY_BROKER_URL"].startswith("redis://redis:6379/")


def test_the_image_holds_the_runtime_requirements_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install -r requirements\.txt$", dockerfile, re.M)
    assert "requirements-dev" not in dockerfile
    runtime = (ROOT / "requirements.txt").read_text().lower()
    for tool in ("pytest", "ruff", "mypy", "playwright", "hypothesis", "schemathesis"):
        assert tool not in runtime, tool
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)


@pytest.mark.parametrize(
    "line",
    [ln for ln in readme_block("Running it with Docker Compose").splitlines() if "docker compose" in ln],
)
def test_the_readme_walkthrough_names_real_services_and_commands(line):
    words = shlex.split(line.split("#", 1)[0].replace("$(", " ").replace(")", " "))
    at = words.index("docker")
    assert words[at + 1] == "compose"
    action = words[at + 2]
    assert action in {"up", "exec", "run", "logs", "ps", "down"}, line
    if action == "exec":
        rest = [w for w in words[at + 3 :] if not w.startswith("-")]
        service, argv = rest[0], rest[1:]
        assert service in APP, line
        assert argv[:2] == ["python", "manage.py"], line
        commands = {p.stem for p in ROOT.glob("*/management/commands/*.py")} | {"createsuperuser", "migrate"}
        assert argv[2] in commands, line
