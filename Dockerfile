# syntax=docker/dockerfile:1
# kduflow worker image: Python 3.11, the kduflow package (no sandbox, no tests), and the official
# helm 4 and kubectl release binaries for the target architecture, each checked against a pinned
# sha256. Build for one or both architectures with BuildKit:
#   docker buildx build --platform linux/amd64,linux/arm64 -t kduflow-worker:0.1.0 .

ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# ---------------------------------------------------------------------------------------------
# helm and kubectl, downloaded from their official release locations and verified.
# To move to another release, change the version and take both checksums from
#   https://get.helm.sh/helm-v<version>-linux-<arch>.tar.gz.sha256sum
#   https://dl.k8s.io/release/v<version>/bin/linux/<arch>/kubectl.sha256
# kubectl 1.37.1 is the version scripts/fetch_tools.py pins for helm 4; its linux/amd64 binary is
# byte-identical to the one fetch_tools.py verifies. helm is 4.3.0, one patch release behind
# fetch_tools.py's 4.3.1: these pins were checked against helm 4.3.0's published checksums
# (kduflow supports helm 4 from 4.2).
# ---------------------------------------------------------------------------------------------
# Runs on the build machine's platform (no emulation); it fetches binaries for TARGETARCH.
FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS tools
ARG TARGETARCH
ARG HELM_VERSION=4.3.0
ARG HELM_SHA256_AMD64=86584a54def73570558f66f5111cc53dfed56689637ae32c1201205d494f54fb
ARG HELM_SHA256_ARM64=31c5794dd55c66a51e6b7d2e2ac7a114ae8b1de41ff1d9ba51748ac973b06a08
ARG KUBECTL_VERSION=1.37.1
ARG KUBECTL_SHA256_AMD64=65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8
ARG KUBECTL_SHA256_ARM64=ff749f4b78d9c4f1ec87307df9b50119ed819e2094aa9810cb9acffc3286c8c7
RUN set -eu; \
    case "${TARGETARCH:-}" in \
      amd64) helm_sha="${HELM_SHA256_AMD64}"; kubectl_sha="${KUBECTL_SHA256_AMD64}" ;; \
      arm64) helm_sha="${HELM_SHA256_ARM64}"; kubectl_sha="${KUBECTL_SHA256_ARM64}" ;; \
      *) echo "no pinned helm/kubectl sha256 for TARGETARCH='${TARGETARCH:-}':" \
              "build with BuildKit (docker buildx build) for linux/amd64 or linux/arm64" >&2; \
         exit 1 ;; \
    esac; \
    fetch() { python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"; }; \
    fetch "https://get.helm.sh/helm-v${HELM_VERSION}-linux-${TARGETARCH}.tar.gz" /tmp/helm.tar.gz; \
    echo "${helm_sha}  /tmp/helm.tar.gz" | sha256sum -c -; \
    fetch "https://dl.k8s.io/release/v${KUBECTL_VERSION}/bin/linux/${TARGETARCH}/kubectl" /tmp/kubectl; \
    echo "${kubectl_sha}  /tmp/kubectl" | sha256sum -c -; \
    tar -xzf /tmp/helm.tar.gz -C /tmp "linux-${TARGETARCH}/helm"; \
    mkdir -p /out; \
    install -m 0755 "/tmp/linux-${TARGETARCH}/helm" /out/helm; \
    install -m 0755 /tmp/kubectl /out/kubectl

# ---------------------------------------------------------------------------------------------
# The kduflow package and its pinned dependencies, in a virtualenv copied into the final image.
# Only the packages the worker imports are in the build context (see .dockerignore).
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md worker.py ./
COPY activities ./activities
COPY workflows ./workflows
COPY kduflow ./kduflow
RUN python -m venv /opt/kduflow \
    && /opt/kduflow/bin/pip install --no-cache-dir --disable-pip-version-check /src

# ---------------------------------------------------------------------------------------------
# Runtime: unprivileged user 10001, state directory (a disposable per-container cache) owned by it.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --user-group kduflow \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/kduflow
COPY --from=build /opt/kduflow /opt/kduflow
COPY --from=tools /out/helm /usr/local/bin/helm
COPY --from=tools /out/kubectl /usr/local/bin/kubectl
ENV PATH=/opt/kduflow/bin:$PATH \
    KDUFLOW_HELM=/usr/local/bin/helm \
    KDUFLOW_KUBECTL=/usr/local/bin/kubectl \
    KDUFLOW_STATE_DIR=/var/lib/kduflow \
    KDUFLOW_HEALTH_FILE=/var/lib/kduflow/health.json \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/kduflow
# The worker drains running activities for KDUFLOW_GRACEFUL_SHUTDOWN seconds after SIGTERM; give
# the container a stop grace period above that (docker-compose.yml does).
STOPSIGNAL SIGTERM
# The worker rewrites KDUFLOW_HEALTH_FILE every KDUFLOW_HEALTH_INTERVAL (10) seconds after checking
# that Temporal and the store answer; the probe only reads that file (no network I/O).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-m", "kduflow.health"]
ENTRYPOINT ["kduflow-worker"]
