# weft's container image: the statically linked weftd (node agent) and weft
# (CNI plugin), and nothing else.
#   docker build -t REGISTRY/weft:0.1.0 .
# Without a container engine, scripts/build-image assembles the same final
# stage as an OCI archive from `scripts/build-static weftd weft-cni` output.

FROM rust:1.89-bookworm AS build
# protoc and the protobuf well-known types: the etcd client (etcd-client)
# compiles etcd's v3 API definitions when it is built.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \
    protobuf-compiler libprotobuf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY daemon daemon
COPY cni-shim cni-shim
COPY tests tests
COPY scripts/build-static scripts/build-plugin scripts/
# weftd with glibc linked statically (-C target-feature=+crt-static), the
# plugin with no C library at all; both checked with ldd: the final image has
# no libc to load.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash scripts/build-static weftd weft-cni \
 && mkdir /out \
 && cp "target/$(rustc -vV | sed -n 's/^host: //p')/release/weftd" \
       "target/$(rustc -vV | sed -n 's/^host: //p')/release/weft" /out/

FROM scratch
COPY --from=build /out/weftd /out/weft /usr/local/bin/
ENV PATH=/usr/local/bin
# Non-root by default. The weft DaemonSet sets uid 0 (with every capability
# dropped except NET_ADMIN) because it writes root-owned host paths
# (/run/flannel, /opt/cni/bin, /etc/cni/net.d) and Kubernetes hands added
# capabilities to uid 0 only; see charts/weft/templates/daemonset.yaml.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weftd"]
