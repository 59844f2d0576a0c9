# qsmprep BIDS-App container: installs the package exactly as the README does.
# BASE_IMAGE: any Debian-family image whose `python`/`pip` are CPython 3.11-3.13 with pip
# allowed to install system-wide (the official image by default).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV NIPYPE_NO_ET=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/opt/matplotlib \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    QSMPREP_CACHE=/opt/qsmprep-cache \
    NUMBA_CACHE_DIR=/opt/numba-cache

WORKDIR /src/qsmprep
COPY pyproject.toml README.md ./
COPY qsmprep ./qsmprep
# the default atlas is assembled once here, so runs never need a writable cache; matplotlib's
# font cache is built here too, in a folder every user may write (a folder the build made under
# /tmp would belong to root, and matplotlib would warn at every run); the numba
# kernels are compiled once here too (30 s), so runs on this CPU model start warm. The numba
# cache stays writable: on another CPU model numba compiles again and keeps the result there
# (a read-only image, e.g. Apptainer, falls back to the user's cache folder).
RUN pip install --no-cache-dir . \
    && python -c "from qsmprep.data.atlases import build_default_atlas; build_default_atlas()" \
    && python -m qsmprep.algorithms.warmup \
    && python -c "import matplotlib.pyplot" \
    && chmod -R a+rX /opt/qsmprep-cache \
    && chmod -R a+rwX /opt/numba-cache /opt/matplotlib \
    && rm -rf /tmp/* \
    && useradd --create-home --uid 1000 qsmprep

USER qsmprep
WORKDIR /work
ENTRYPOINT ["qsmprep"]
CMD ["--help"]
