# The agent as a FROM scratch image (deploy/kubernetes/agent runs it). Build the static binary:
#   scripts/cross-build.sh x86_64-unknown-linux-musl        (or aarch64-unknown-linux-musl)
#   docker build -f deploy/docker/agent.Dockerfile -t nowconnect-agent:0.1.0 \
#     --build-arg BINARY=target/x86_64-unknown-linux-musl/release/nowconnect-agent .
# The relay's CA, when private, goes in proxy.ca_bundle (NC_CA_BUNDLE) mounted from a ConfigMap.
FROM scratch
ARG BINARY=target/x86_64-unknown-linux-musl/release/nowconnect-agent
COPY --chmod=0555 ${BINARY} /nowconnect-agent
USER 65532:65532
EXPOSE 8090
ENTRYPOINT ["/nowconnect-agent"]
CMD ["--config", "/etc/nowconnect/config/premise.yaml"]
