# The convoy-agent image the Helm chart runs (charts/convoy-agent, values
# image.repository/tag). No image is published yet; build and push your own:
#   docker build -t REGISTRY/convoy-agent:0.1.0 .
# protoc is vendored (protoc-bin-vendored), so the build needs nothing but cargo.
FROM docker.io/library/rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# The `agent` profile is release with whole-program LTO (see Cargo.toml).
RUN cargo build --profile agent --locked -p convoy-agent --bin convoy-agent \
 && strip target/agent/convoy-agent

# glibc and libgcc only (rustls with ring: no OpenSSL); runs as 65532 like the
# chart's podSecurityContext, on a read-only root filesystem.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/agent/convoy-agent /usr/local/bin/convoy-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/convoy-agent"]
CMD ["run"]
