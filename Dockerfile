# callwatch production image: runs as an unprivileged user.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml requirements.lock README.md ./
COPY messages ./messages
COPY runtime ./runtime
COPY supervisors ./supervisors
COPY actors ./actors
COPY callwatch ./callwatch
COPY sandbox ./sandbox
RUN pip install --no-cache-dir -c requirements.lock . \
    && useradd --system --create-home --home-dir /var/lib/callwatch callwatch

USER callwatch
EXPOSE 8787
CMD ["callwatch", "run"]
