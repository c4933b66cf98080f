# syntax=docker/dockerfile:1
# lessor: build with the Rust toolchain, run on a slim Debian.
#   docker build -t lessor .      (or: docker compose build)

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin lessor \
 && install -D -m 0755 target/release/lessor /out/lessor

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid (10001) so client containers can be given the socket's group.
RUN groupadd --system --gid 10001 lessor \
 && useradd --system --uid 10001 --gid lessor --home-dir /var/lib/lessor \
            --no-create-home --shell /usr/sbin/nologin lessor \
 && install -d -o lessor -g lessor -m 0750 /run/lessor /var/lib/lessor \
 && install -d -m 0755 /etc/lessor
COPY --from=builder /out/lessor /usr/local/bin/lessor
USER lessor:lessor
ENV LESSOR_SOCKET=/run/lessor/lessor.sock
# New named volumes mounted here take this ownership from the image.
VOLUME ["/run/lessor", "/var/lib/lessor"]
ENTRYPOINT ["lessor"]
CMD ["serve", "--config", "/etc/lessor/lessor.toml"]
