#!/bin/bash
# The standby's entrypoint (official postgres image): on an empty data directory, copy the primary
# with pg_basebackup -R (writes standby.signal and primary_conninfo, streams through the slot
# `standby1`), then hand over to the image's entrypoint, which finds a data directory and just
# starts the server — as a hot standby following the primary.
set -euo pipefail

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
: "${PRIMARY_HOST:?}" "${PGPASSWORD_REPLICATION:?}"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  until pg_isready -h "$PRIMARY_HOST" -p 5432 -q; do
    echo "standby: waiting for $PRIMARY_HOST"
    sleep 2
  done
  echo "standby: copying $PRIMARY_HOST (pg_basebackup)"
  gosu postgres env PGPASSWORD="$PGPASSWORD_REPLICATION" \
    pg_basebackup --host="$PRIMARY_HOST" --port=5432 --username=replicator \
      --pgdata="$PGDATA" --wal-method=stream --slot=standby1 \
      --write-recovery-conf --checkpoint=fast --progress
fi

exec docker-entrypoint.sh "$@"
