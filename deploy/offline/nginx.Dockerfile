# nginx for deploy/compose.yaml where nginx:1.27-alpine cannot be pulled: Debian's nginx-light on a local base
# (scripts/docker-base.sh), behaving like the official image where compose relies on it: templates in
# /etc/nginx/templates/*.template rendered with envsubst into /etc/nginx/conf.d/ at start, wget for the health check.
#   docker build --network host -f deploy/offline/nginx.Dockerfile --build-arg BASE_IMAGE="$(bash scripts/docker-base.sh)" -t captioner-nginx deploy/offline
#   NGINX_IMAGE=captioner-nginx docker compose -f deploy/compose.yaml up -d
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light gettext-base wget \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
COPY nginx-entrypoint.sh /docker-entrypoint.sh
ENTRYPOINT ["/bin/sh", "/docker-entrypoint.sh"]
EXPOSE 8080
# SIGQUIT: nginx's graceful shutdown (finishes the requests in flight), as in the official image.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
