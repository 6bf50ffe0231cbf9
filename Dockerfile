# syntax=docker/dockerfile:1.7
# fluxql: one image for every role (`serve`, `serve --role api`, `serve --role worker`). See docs/SCALE_OUT.md.
# Written without a Docker daemon at hand (the development machine has none): build and run it once before
# relying on it.
#
#   docker build -t fluxql .                          # CPU runtime (ONNX Runtime's bundled CPU provider)
#   docker build -t fluxql:cuda --target runtime-cuda \
#     --build-arg ORT_INSTALL=cuda12 .                # ONNX Runtime's CUDA provider + CUDA 12 / cuDNN 9 runtime libs

ARG NODE_VERSION=20.19
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- build: all dependencies, the web page, then drop the dev dependencies --------------------------------------
FROM node:${NODE_VERSION}-bookworm-slim AS build
# `skip` keeps onnxruntime-node's CPU binaries only; `cuda12` downloads its CUDA provider (needs network).
ARG ORT_INSTALL=skip
ENV ONNXRUNTIME_NODE_INSTALL=${ORT_INSTALL}
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY . .
RUN npm run build:web && npm prune --omit=dev --no-audit --no-fund

# ---- runtime (CUDA): the same app on NVIDIA's CUDA + cuDNN runtime libraries --------------------------------------
FROM node:${NODE_VERSION}-bookworm-slim AS node
FROM ${CUDA_IMAGE} AS runtime-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 fluxql && useradd --uid 10001 --gid fluxql --create-home fluxql
COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
COPY --from=build --chown=fluxql:fluxql /app /app
RUN mkdir -p /data/images /data/cache && chown -R fluxql:fluxql /data
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    IMAGE_DIR=/data/images \
    CACHE_DIR=/data/cache \
    PROVIDER=cuda
USER fluxql
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--", "node", "bin/fluxql.js"]
CMD ["serve", "--role", "worker"]

# ---- runtime (CPU; the default target, being the last stage): Node and libgomp for ONNX Runtime -------------
FROM node:${NODE_VERSION}-bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build --chown=node:node /app /app
# Shared image directory (mount the same volume on every node) and the compiled-engine cache.
RUN mkdir -p /data/images /data/cache && chown -R node:node /data
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    IMAGE_DIR=/data/images \
    CACHE_DIR=/data/cache
USER node
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||8000)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["/usr/bin/tini", "--", "node", "bin/fluxql.js"]
CMD ["serve"]
