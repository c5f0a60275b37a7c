# kduflow worker image: Python 3.11, kduflow, and the pinned, checksum-verified helm 4 / kubectl.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 kduflow
WORKDIR /app
COPY pyproject.toml README.md worker.py ./
COPY activities ./activities
COPY workflows ./workflows
COPY kduflow ./kduflow
COPY sandbox ./sandbox
COPY scripts ./scripts
RUN pip install --no-cache-dir . \
    && python scripts/fetch_tools.py --dest /opt/kduflow-tools \
    && mkdir -p /var/lib/kduflow && chown kduflow /var/lib/kduflow

ENV KDUFLOW_HELM=/opt/kduflow-tools/helm4/helm \
    KDUFLOW_KUBECTL=/opt/kduflow-tools/helm4/kubectl \
    KDUFLOW_STATE_DIR=/var/lib/kduflow \
    PYTHONUNBUFFERED=1
USER kduflow
STOPSIGNAL SIGTERM
ENTRYPOINT ["kduflow-worker"]
