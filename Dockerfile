# tidings in a container: a build stage with the Rust toolchain, then a
# small Debian runtime with only the binary, running as a non-root user.
# The image needs a PostgreSQL to talk to (DATABASE_URL); the embedded
# cluster is for development and is not in the image.

FROM rust:1-bookworm AS build
WORKDIR /src
# Queries are checked against the committed .sqlx/ metadata: no database
# is needed to build.
ENV SQLX_OFFLINE=true
COPY . .
RUN cargo build --release --locked --bin tidings

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tidings
COPY --from=build /src/target/release/tidings /usr/local/bin/tidings
USER 10001
ENV TIDINGS_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tidings"]
CMD ["serve"]
