# One image for every Maschina process (web, worker, sweeper, beat, migrations): the runtime
# requirements only; the tests and linters stay out of it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MASCHINA_VAR_DIR=/var/lib/maschina

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN useradd --system --uid 10001 maschina \
    && mkdir -p /var/lib/maschina /var/lib/maschina-metrics \
    && chown maschina /var/lib/maschina /var/lib/maschina-metrics
USER maschina

EXPOSE 8000
CMD ["gunicorn", "maschina.asgi:application", "-k", "uvicorn_worker.UvicornWorker", "--workers", "2", "--bind", "0.0.0.0:8000"]
