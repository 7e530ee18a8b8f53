"""The product's settings plus the benchmarks' helper app (bench/benchapp: the baselines' table,
endpoint and no-op task). Only the benchmarks use this module; nothing of it is in the product."""

from maschina.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]  # noqa: F405
ROOT_URLCONF = "bench.urls"
