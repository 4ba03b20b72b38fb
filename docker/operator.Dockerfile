# syntax=docker/dockerfile:1
# Build: docker build -f docker/operator.Dockerfile -t litecluster-operator .
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p litecluster-operator \
    && cp target/release/litecluster-operator /litecluster-operator

# distroless/cc: glibc and CA certificates, no shell; runs as uid 65532.
FROM ${RUNTIME_IMAGE}
COPY --from=build /litecluster-operator /usr/local/bin/litecluster-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/litecluster-operator"]
CMD ["run"]
