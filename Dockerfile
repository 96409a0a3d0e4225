# The cadence engine: one image for the workers (`cadence worker`, the default command) and the simulator.
#   docker build -t cadence:local .
#   docker run --rm -e KAFKA_BOOTSTRAP=kafka:9092 -e REDIS_URL=redis://redis:6379/0 \
#       -e CADENCE_WEB_HOST=0.0.0.0 -p 6066:6066 cadence:local
# Without KAFKA_BOOTSTRAP / REDIS_URL the worker starts the embedded broker and Redis (fine for a try-out,
# not for production: they keep everything in memory).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, in their own layer, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the engine itself (.dockerignore keeps the venv, tests and local data out of the context).
COPY . ./
RUN pip install --no-deps . \
    && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/cadence cadence
USER cadence
WORKDIR /var/lib/cadence

ENV CADENCE_DATA_DIR=/var/lib/cadence \
    CADENCE_WEB_HOST=0.0.0.0 \
    CADENCE_WEB_PORT=6066

EXPOSE 6066
CMD ["cadence", "worker"]
