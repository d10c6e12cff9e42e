# Builds both binaries; the image runs the control plane by default.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p coffer-control-plane -p coffer-worker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 coffer
COPY --from=build /src/target/release/coffer-control-plane /src/target/release/coffer-worker /usr/local/bin/
USER coffer
WORKDIR /var/lib/coffer
EXPOSE 50051
ENTRYPOINT ["coffer-control-plane"]
