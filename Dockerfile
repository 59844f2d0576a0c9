# qsmprep BIDS-App container: installs the package exactly as the README does.
FROM python:3.11-slim-bookworm

ENV NIPYPE_NO_ET=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    QSMPREP_CACHE=/opt/qsmprep-cache

WORKDIR /src/qsmprep
COPY pyproject.toml README.md ./
COPY qsmprep ./qsmprep
# the default atlas is assembled once here, so runs never need a writable cache
RUN pip install --no-cache-dir . \
    && python -c "from qsmprep.data.atlases import build_default_atlas; build_default_atlas()" \
    && chmod -R a+rX /opt/qsmprep-cache \
    && useradd --create-home --uid 1000 qsmprep

USER qsmprep
WORKDIR /work
ENTRYPOINT ["qsmprep"]
CMD ["--help"]
