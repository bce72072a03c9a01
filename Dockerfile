# gpuplan web service: CPU-only torch (the planner never runs a model), non-root, data on a volume.
#   docker build -t gpuplan .
#   docker run -p 8000:8000 -v gpuplan-data:/data gpuplan
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GPUPLAN_DATA_DIR=/data \
    HF_HOME=/data/hf-home

# Behind a port mapping the Host header is whatever clients use: answer any (pages use relative URLs, so no Host
# is reflected). Narrow it in production: docker run -e GPUPLAN_TRUSTED_HOSTS=gpuplan.example.com ...
ENV GPUPLAN_TRUSTED_HOSTS="*"

WORKDIR /srv/gpuplan

# WeasyPrint's system libraries for the PDF reports (its docs, Debian >= 11, installing from wheels: Pango and
# Pango-FT2; HarfBuzz-Subset, which WeasyPrint >= 70 asks for) and a font, since the slim image has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b libharfbuzz-subset0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Dependencies in their own layer: install against a stub package, then copy the real code over it.
# Editable on purpose: the templates/ and static/ folders beside app/ are found relative to the source.
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py && pip install -e .

COPY app ./app
COPY templates ./templates
COPY static ./static
COPY calibration/results ./calibration/results

RUN useradd --system --uid 10001 --user-group --home-dir /srv/gpuplan --no-create-home --shell /usr/sbin/nologin gpuplan \
    && mkdir -p /data \
    && chown gpuplan:gpuplan /data

USER gpuplan
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["gpuplan", "serve", "--host", "0.0.0.0"]
