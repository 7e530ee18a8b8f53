from django.apps import AppConfig


class BenchappConfig(AppConfig):
    """Baselines for bench/: installed only by bench.settings."""

    name = "bench.benchapp"
    label = "benchapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import tasks  # noqa: F401  registers the no-op task with the Celery app
