# qsmprep BIDS-App container: installs the package exactly as the README does.
FROM python:3.11-slim-bookworm

ENV NIPYPE_NO_ET=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TEMPLATEFLOW_HOME=/opt/templateflow

WORKDIR /src/qsmprep
COPY pyproject.toml README.md ./
COPY qsmprep ./qsmprep
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 1000 qsmprep

USER qsmprep
WORKDIR /work
ENTRYPOINT ["qsmprep"]
CMD ["--help"]
