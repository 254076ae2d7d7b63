# syntax=docker/dockerfile:1
# drisc: a multi-stage build. The builder compiles the dependencies in a layer of
# their own (cached until Cargo.toml or Cargo.lock change), then the server; the
# runtime image holds the binary, CA certificates and nothing else of note, and
# runs as an unprivileged user.
#
#   docker build -t drisc .
#   docker run -p 8080:8080 -v drisc-data:/var/lib/drisc drisc

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /build
# Dependencies first: a manifest-only build with stub sources, so this layer is
# reused while only the project's own code changes.
# The workspace names the load generator (crates/drisc-load) as a member: its
# manifest must be there, but the image never builds it, so a stub library
# and a stub program stand in for its sources.
COPY Cargo.toml Cargo.lock ./
COPY crates/drisc-load/Cargo.toml crates/drisc-load/
RUN mkdir -p src crates/drisc-load/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo '' > crates/drisc-load/src/lib.rs \
    && echo 'fn main() {}' > crates/drisc-load/src/main.rs \
    && cargo build --release --locked --bin drisc \
    && rm -rf src
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
# Touch the sources so cargo rebuilds them instead of trusting the stub's timestamps.
RUN find src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin drisc \
    && cp target/release/drisc /usr/local/bin/drisc

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# No packages needed: drisc's only TLS client (JWKS over https) carries its own web
# roots, and its Redis and PostgreSQL clients are built without TLS.
RUN groupadd --system --gid 10001 drisc \
    && useradd --system --uid 10001 --gid drisc --home-dir /var/lib/drisc --shell /usr/sbin/nologin drisc \
    && install -d -o drisc -g drisc -m 0700 /var/lib/drisc
COPY --from=builder /usr/local/bin/drisc /usr/local/bin/drisc
USER 10001:10001
WORKDIR /var/lib/drisc
ENV DRISC__SERVER__HOST=0.0.0.0 \
    DRISC__SERVER__PORT=8080 \
    DRISC__STORAGE__DATA_DIR=/var/lib/drisc \
    DRISC__LOG__FORMAT=json
VOLUME ["/var/lib/drisc"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["drisc", "healthcheck"]
ENTRYPOINT ["drisc"]
CMD ["serve"]
