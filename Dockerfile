FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tasks tasks
COPY providers providers
COPY config config
RUN pip install --no-cache-dir . && useradd --create-home poller
USER poller
CMD ["celery", "-A", "export_poller", "worker", "--loglevel", "INFO", "--pool", "threads", "--concurrency", "16"]
