# One image for every process of a deployment; the command picks which (see bin/container):
#   docker build -t hyperblock .
#   docker run --env-file .env hyperblock migrate | web | worker QUEUE | beat
#
# One stage: every dependency ships as a binary wheel, so no compiler or build headers are
# installed and a second stage would have nothing to leave behind.
# PYTHON_IMAGE lets a registry mirror or a digest-pinned base stand in for the default.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=portal.settings.production \
    PORT=8000

RUN groupadd --gid 10001 hyperblock \
    && useradd --uid 10001 --gid hyperblock --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin hyperblock \
    && python -m venv /opt/venv

WORKDIR /app

# The dependencies get their own layer, rebuilt only when pyproject.toml changes: empty
# packages stand in for the source so pip can resolve the project without it.
COPY pyproject.toml ./
RUN for app in core accounts capacity billing backoffice portal; do \
        mkdir "$app" && touch "$app/__init__.py"; done \
    && pip install -e . \
    && rm -rf core accounts capacity billing backoffice portal

COPY . .
# Editable on purpose: the settings find templates/, the apps' static files and var/ next to the
# source (BASE_DIR), which a regular install into site-packages would separate from the code.
# collectstatic needs the production settings to load, so it gets a dummy key and host for this
# one command; neither is kept in the image, and every container is given its own.
RUN pip install --no-deps -e . \
    && python -m compileall -q accounts billing capacity portal \
    && DJANGO_SECRET_KEY=build-only-not-a-secret DJANGO_ALLOWED_HOSTS=build.invalid \
        bin/container collectstatic \
    && mkdir -p var/beat \
    && chown hyperblock:hyperblock var/beat

USER hyperblock
EXPOSE 8000
# Liveness of the web process. Worker and beat containers run their own check (compose.yaml).
HEALTHCHECK --interval=30s --timeout=6s --start-period=20s --retries=3 \
    CMD ["/app/bin/container", "probe", "web"]
ENTRYPOINT ["/app/bin/container"]
CMD ["web"]
