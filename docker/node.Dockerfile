# syntax=docker/dockerfile:1
# Build: docker build -f docker/node.Dockerfile -t litecluster-node .
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p litecluster-node \
    && cp target/release/litecluster-node /litecluster-node

# distroless/cc: glibc, no shell; uid 65532 matches the StatefulSet's runAsUser/fsGroup.
# SQLite is bundled into the binary. The root filesystem can be read-only: data lives in
# /var/lib/litecluster (the member's volume) and scratch files in /tmp (an emptyDir).
FROM ${RUNTIME_IMAGE}
COPY --from=build /litecluster-node /usr/local/bin/litecluster-node
USER 65532:65532
EXPOSE 4001 4002
VOLUME ["/var/lib/litecluster"]
ENTRYPOINT ["/usr/local/bin/litecluster-node"]
