# One image for every role: `proctor serve | media | worker | migrate | user ... | token ...`.
# Build: docker build -t proctor .      Run: docker run --rm proctor --help
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROCTOR_DATA_DIR=/var/lib/proctor \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080

# Run-time libraries only: libGL/GLib for opencv, mediapipe and dlib; ffmpeg for the archive tools.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from the lock file alone, so source edits do not reinstall them (same as `make venv`).
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock

# Then the project itself. It is installed in place (-e), as `make venv` does: `proctor migrate` finds
# alembic.ini and alembic/ next to the `proctor` package, and the web templates/static stay in /app/web.
COPY . .
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/proctor --create-home proctor \
    && python -c "import proctor.cli"

USER proctor
EXPOSE 8080
ENTRYPOINT ["proctor"]
CMD ["serve"]
