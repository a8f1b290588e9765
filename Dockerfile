# gpuledger: the node agent (`gpuledger agent`, the default command) and every other
# subcommand (`report`, `replay`, ...). Build from the repository root:
#
#   docker build -t gpuledger:0.1.0 .
#
# NVML (libnvidia-ml.so.1) is not in the image: the NVIDIA container toolkit mounts the
# node driver's copy at run time (NVIDIA_VISIBLE_DEVICES=all,
# NVIDIA_DRIVER_CAPABILITIES=utility; the Helm chart sets both). Without it only
# --dry-run works, which needs no GPU at all.

# --- build: the gpuledger wheel, then a virtual environment with it and its dependencies
FROM python:3.12-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent/ agent/
COPY collectors/ collectors/
COPY recommenders/ recommenders/
# `cloud` adds boto3 and google-cloud-billing for --aws and --gcp.
ARG EXTRAS=cloud
# Dependencies are binary wheels only (--only-binary): no compiler in either stage. Their
# versions are the ranges pyproject.toml declares.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/gpuledger \
 && wheel="$(ls /wheels/gpuledger-*.whl)" \
 && /opt/gpuledger/bin/pip install --only-binary=:all: "${wheel}${EXTRAS:+[$EXTRAS]}" \
 && /opt/gpuledger/bin/pip uninstall --yes pip \
 && /opt/gpuledger/bin/gpuledger --help >/dev/null

# --- run: the same base (the environment's python links into it), the environment, nothing else
FROM python:3.12-slim-bookworm
LABEL org.opencontainers.image.title="gpuledger" \
      org.opencontainers.image.description="GPU cost attribution for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/gpuledger /opt/gpuledger
ENV PATH=/opt/gpuledger/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Non-root by default (dry-run, report, replay). The chart runs the live agent as root
# with every capability dropped, for the kubelet's root-owned pod-resources socket
# (docs/helm.md).
USER 65532:65532
EXPOSE 9400
ENTRYPOINT ["gpuledger"]
CMD ["agent"]
