from django.apps import AppConfig


class BenchappConfig(AppConfig):
    """Baselines for bench/ (issue 6): installed only when MASCHINA_BENCH=1 (maschina/settings.py)."""

    name = "benchapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import tasks  # noqa: F401  registers the no-op task with the Celery app
