# Coffer: both binaries in one image; it runs the control plane by default
# (`coffer-worker` is the other entrypoint).
#
#   docker build -t coffer:0.1.0 .
#
# The dependency layer is built from the manifests alone (the crates' sources
# replaced by empty stubs), so a change to Coffer's own code recompiles only
# Coffer, not the few hundred crates it depends on.

FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The protobuf crate is small and its build script needs the .proto files.
COPY proto proto
COPY control-plane/Cargo.toml control-plane/
COPY worker/Cargo.toml worker/
COPY format/Cargo.toml format/
COPY fuzz/harness/Cargo.toml fuzz/harness/
RUN for crate in control-plane worker format fuzz/harness; do \
        mkdir -p "$crate/src" && : > "$crate/src/lib.rs"; \
    done \
    && echo 'fn main() {}' > control-plane/src/main.rs \
    && echo 'fn main() {}' > worker/src/main.rs \
    && cargo build --release --locked -p coffer-control-plane -p coffer-worker \
    && rm -rf control-plane/src worker/src format/src fuzz/harness/src

COPY . .
# COPY keeps the files' own modification times, which may be older than the
# stubs' build: touched, so that cargo rebuilds Coffer's crates from them.
RUN find control-plane worker format fuzz/harness -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p coffer-control-plane -p coffer-worker

FROM debian:12.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 coffer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/coffer --no-create-home coffer \
    && install -d -o coffer -g coffer -m 0700 /var/lib/coffer /var/lib/coffer/worker-tokens
COPY --from=build /src/target/release/coffer-control-plane /src/target/release/coffer-worker /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/coffer
# The data directory (the admin token generated on first start) and the
# per-worker tokens: both owner-only; volumes mounted here start with that mode.
ENV COFFER_DATA_DIR=/var/lib/coffer
# The health check speaks plaintext on loopback; the main port serves TLS in
# standalone mode (a generated certificate) and wherever certificates are set.
ENV COFFER_LOCAL_LISTEN=127.0.0.1:50052
EXPOSE 50051
# Readiness of the control plane (grpc.health.v1 over loopback). Workers
# override it with `coffer-worker healthcheck`.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["coffer-control-plane", "healthcheck"]
ENTRYPOINT ["coffer-control-plane"]
