# The demo and its recommendations upstream (same image, different command; see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv

# The library first: its layer is rebuilt only when it changes.
COPY pyproject.toml README.md ./
COPY middleware ./middleware
RUN pip install '.[demo]' 'uvicorn[standard]>=0.30'  # the demo's extra (asyncpg and psycopg both)

COPY app ./app
COPY services ./services
COPY repositories ./repositories

# A fresh named volume mounted at /srv/data/uploads takes this directory's owner.
RUN useradd --system --home-dir /srv demo && mkdir -p /srv/data/uploads && chown -R demo /srv/data
USER demo

EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
