# Redis for deploy/compose.yaml where redis:7-alpine cannot be pulled: Debian's redis-server (7.0) on a local base
# (scripts/docker-base.sh).
#   docker build --network host -f deploy/offline/redis.Dockerfile --build-arg BASE_IMAGE="$(bash scripts/docker-base.sh)" -t captioner-redis deploy/offline
#   REDIS_IMAGE=captioner-redis docker compose -f deploy/compose.yaml up -d
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
# As the official image: without a config file, protected mode would refuse every client but loopback; the
# container's network is the boundary here (compose publishes no Redis port).
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = redis-server ]; then shift; exec redis-server --protected-mode no \"$@\"; fi; exec \"$@\"", "--"]
CMD ["redis-server"]
