#!/bin/sh
# The official image's entrypoint runs its command (`nginx -g 'daemon off;'`). This image's nginx
# has the stream module as a dynamic module, which the official image has built in, so the same
# command loads it first (nginx takes only the last -g: the directives go into one).
set -e
if [ "$1" = nginx ] && [ "$2" = -g ]; then
    directives=$3
    shift 3
    exec nginx -g "load_module /usr/lib/nginx/modules/ngx_stream_module.so; $directives" "$@"
fi
exec "$@"
