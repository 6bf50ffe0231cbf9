# syntax=docker/dockerfile:1.7
# fluxql images; one image serves every role (`serve`, `serve --role api`, `serve --role worker`), see
# docs/SCALE_OUT.md. Written without a Docker daemon at hand (none on the development machine): what was and was not
# checked is in docs/DOCKER.md. test/unit/deploy.test.ts checks this file statically and runs its steps' equivalents.
#
#   docker build -t fluxql .                               # CPU: ONNX Runtime (bundled CPU provider), Node 24 LTS
#   docker build -t fluxql:cuda --target runtime-cuda .    # GPU: the native CUDA engine (engines/cuda), CUDA 13
#
# Production runs the compiled JavaScript (dist/, `npm run build`); tsx and the TypeScript sources stay in the build.

ARG NODE_VERSION=24
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

# ---- build: dependencies, the web page, the compiled server; then only production dependencies ------------------
FROM node:${NODE_VERSION}-bookworm-slim AS build
# Skip onnxruntime-node's download step: its CPU provider is bundled; the GPU image runs the native engine instead.
ENV ONNXRUNTIME_NODE_INSTALL=skip
WORKDIR /src
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY . .
RUN npm run build:web \
 && npm run build \
 && npm prune --omit=dev --no-audit --no-fund \
 && sh docker/assemble-app.sh /app

# ---- engine: engines/cuda compiled with CUDA 13 (nvcc, cuBLAS/cuBLASLt) and cuDNN 9 ---------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS engine
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake ninja-build \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY engines/cuda engines/cuda
COPY docker/cudnn-dir.sh docker/cudnn-dir.sh
# Hopper (sm_90a) machine code plus compute_90 PTX, as engines/cuda/CMakeLists.txt sets.
RUN cudnn=$(sh docker/cudnn-dir.sh /opt/cudnn) \
 && cmake -S engines/cuda -B engines/cuda/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFQ_CUDNN_DIR="$cudnn" \
 && cmake --build engines/cuda/build -j "$(nproc)" \
 && test -x engines/cuda/build/fluxql-engine

# ---- Node's binary, for the CUDA runtime image ---------------------------------------------------------------------
FROM node:${NODE_VERSION}-bookworm-slim AS node

# ---- runtime (GPU): CUDA 13 + cuDNN runtime libraries, Node, the app and the engine binary -------------------------
# (libgomp1 too: `ENGINE=onnx` on CPU, e.g. `fluxql compile`, still works in this image)
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU} AS runtime-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 fluxql \
 && useradd --uid 10001 --gid fluxql --create-home fluxql \
 && mkdir -p /data/images /data/cache /data/huggingface \
 && chown -R fluxql:fluxql /data
COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
COPY --from=build --chown=fluxql:fluxql /app /app
COPY --from=engine /src/engines/cuda/build/fluxql-engine /app/engines/cuda/build/fluxql-engine
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    IMAGE_DIR=/data/images \
    CACHE_DIR=/data/cache \
    HF_HOME=/data/huggingface \
    AUTH_REQUIRED=1 \
    ENGINE=cuda \
    CUDA_ENGINE_BIN=/app/engines/cuda/build/fluxql-engine
USER fluxql
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 CMD ["node", "docker/healthcheck.mjs"]
ENTRYPOINT ["/usr/bin/tini", "--", "node", "bin/fluxql.js"]
CMD ["serve"]

# ---- runtime (CPU; the default target, being the last stage): Node 24 LTS and libgomp for ONNX Runtime -------------
FROM node:${NODE_VERSION}-bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data/images /data/cache /data/huggingface \
 && chown -R node:node /data
WORKDIR /app
COPY --from=build --chown=node:node /app /app
# Shared image directory (the same volume on every node), the compiled-engine cache and the Hugging Face cache.
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    IMAGE_DIR=/data/images \
    CACHE_DIR=/data/cache \
    HF_HOME=/data/huggingface \
    AUTH_REQUIRED=1
USER node
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["node", "docker/healthcheck.mjs"]
ENTRYPOINT ["/usr/bin/tini", "--", "node", "bin/fluxql.js"]
CMD ["serve"]
