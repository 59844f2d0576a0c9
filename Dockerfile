# qsmprep BIDS-App container: installs the package exactly as the README does.
FROM python:3.11-slim-bookworm

ENV NIPYPE_NO_ET=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    QSMPREP_CACHE=/opt/qsmprep-cache \
    NUMBA_CACHE_DIR=/opt/numba-cache

WORKDIR /src/qsmprep
COPY pyproject.toml README.md ./
COPY qsmprep ./qsmprep
# the default atlas is assembled once here, so runs never need a writable cache; the numba
# kernels are compiled once here too (30 s), so runs on this CPU model start warm. The numba
# cache stays writable: on another CPU model numba compiles again and keeps the result there
# (a read-only image, e.g. Apptainer, falls back to the user's cache folder).
RUN pip install --no-cache-dir . \
    && python -c "from qsmprep.data.atlases import build_default_atlas; build_default_atlas()" \
    && python -m qsmprep.algorithms.warmup \
    && chmod -R a+rX /opt/qsmprep-cache \
    && chmod -R a+rwX /opt/numba-cache \
    && useradd --create-home --uid 1000 qsmprep

USER qsmprep
WORKDIR /work
ENTRYPOINT ["qsmprep"]
CMD ["--help"]
