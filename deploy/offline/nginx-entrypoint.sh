#!/bin/sh
# As the official nginx image: /etc/nginx/templates/X.template -> /etc/nginx/conf.d/X with envsubst, substituting only
# the variables that are set, so that nginx's own $variables stay as they are.
set -eu
if [ -d /etc/nginx/templates ]; then
  defined="$(env | cut -d= -f1 | sed 's/.*/${&}/' | tr '\n' ' ')"
  for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    envsubst "$defined" < "$template" > "/etc/nginx/conf.d/$(basename "$template" .template)"
  done
fi
exec "$@"
