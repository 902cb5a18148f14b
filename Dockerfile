# Petrel server image: a static binary on an empty base image, run as a non-root user, with its
# state in the volume /data.
#
#   docker build -t petrel .
#   docker run -d -p 127.0.0.1:7070:7070 -v petrel-data:/data petrel
#
# This image is not built in CI (README.md, "Self-hosting"); cmd/petrel/deploy_test.go runs the
# build line below and checks that its binary is static, and that CMD and HEALTHCHECK parse.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/petrel ./cmd/petrel
# What the empty final image needs: a user and group for uid 65532, and /data owned by it.
RUN mkdir -p /out/data \
 && echo 'petrel:x:65532:65532:petrel:/data:/sbin/nologin' > /out/passwd \
 && echo 'petrel:x:65532:' > /out/group

FROM scratch
# CA certificates: the ACME CA and external NATS over TLS are verified against them.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build --chown=65532:65532 /out/data /data
COPY --from=build /out/petrel /petrel
USER 65532:65532
VOLUME /data
# 7070: the public listener (clients, /healthz, /readyz). 6222: cluster routes.
# 443 and 80: with --acme-domain (and --acme-http-listen :80).
EXPOSE 7070 6222
# No shell in the image: petrel asks its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/petrel", "healthcheck", "--url", "http://127.0.0.1:7070/healthz"]
ENTRYPOINT ["/petrel"]
# Plain HTTP on all of the container's addresses: publish it on the host's loopback only, for a
# TLS-terminating proxy in front, or serve TLS itself (--acme-domain, or --tls-cert/--tls-key).
# Registration is invite-only off loopback: docker exec CONTAINER /petrel admin invite --data /data
CMD ["serve", "--listen", "0.0.0.0:7070", "--data", "/data", "--insecure"]
