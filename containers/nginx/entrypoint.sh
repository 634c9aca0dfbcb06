#!/bin/sh
# Sidecar start: render /etc/nginx/nginx.conf from the NGINX_* variables, then become nginx.
# An invalid variable stops here (exit 78, message naming it): nginx never starts half-configured.
set -eu
node /opt/ca-dms-nginx/render.mjs \
  --template /opt/ca-dms-nginx/nginx.conf.template \
  --out /etc/nginx/nginx.conf
# -e: errors go to stderr from the start, before the configuration's error_log applies (the
# compiled-in /var/log/nginx is neither present nor writable for the unprivileged user).
exec nginx -e stderr -c /etc/nginx/nginx.conf "$@"
