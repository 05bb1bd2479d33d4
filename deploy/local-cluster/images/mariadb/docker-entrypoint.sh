#!/bin/bash
# Entrypoint of Kapal's local MariaDB image (localhost/kapal/mariadb, built by scripts/build-images
# from Debian's mariadb-server). It honours the part of the official `mariadb` and `mysql` images'
# contract that Kapal's catalog uses; it is not their script:
#
#   MARIADB_ROOT_PASSWORD | MYSQL_ROOT_PASSWORD   root's password (root@'%' and root@localhost);
#     or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD / MARIADB_RANDOM_ROOT_PASSWORD (MYSQL_* too)
#   MARIADB_DATABASE | MYSQL_DATABASE   a database made on first start
#   MARIADB_USER | MYSQL_USER, MARIADB_PASSWORD | MYSQL_PASSWORD
#                                       a user with every privilege on that database
#   /docker-entrypoint-initdb.d/*.sql, *.sh   run once after the first initialisation
#
# The data lives in /var/lib/mysql (the volume). Started as root, it makes the data directory the
# mysql user's (uid 999, as upstream) and runs the server as that user; started as another user,
# it runs as that user. An empty data directory is initialised on the first start with the
# server listening on a socket only, so the port opens when the database is ready.
set -euo pipefail

DATADIR=/var/lib/mysql
SOCKET=/run/mysqld/mysqld.sock

log() { printf '%s [Note] [Entrypoint]: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S')" "$*"; }
fail() { printf '%s [ERROR] [Entrypoint]: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S')" "$*" >&2; exit 1; }

# env_of NAME: $MARIADB_NAME, else $MYSQL_NAME, else empty
env_of() {
  local m="MARIADB_$1" y="MYSQL_$1"
  if [ -n "${!m:-}" ]; then printf '%s' "${!m}"; else printf '%s' "${!y:-}"; fi
}

# sql_string VALUE: VALUE as a single-quoted SQL string literal
sql_string() {
  local v=${1//\\/\\\\}
  printf "'%s'" "${v//\'/\\\'}"
}

# sql_name VALUE: VALUE as a back-quoted SQL identifier
sql_name() { printf '`%s`' "${1//\`/\`\`}"; }

if [ "${1:-}" = mariadbd ] || [ "${1:-}" = mysqld ]; then
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$DATADIR" /run/mysqld
    find "$DATADIR" /run/mysqld \! -user mysql -exec chown mysql:mysql '{}' +
    exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
  fi

  if [ ! -d "$DATADIR/mysql" ]; then
    root_password=$(env_of ROOT_PASSWORD)
    if [ -z "$root_password" ] && [ -z "$(env_of ALLOW_EMPTY_ROOT_PASSWORD)" ]; then
      if [ -n "$(env_of RANDOM_ROOT_PASSWORD)" ]; then
        root_password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
        log "GENERATED ROOT PASSWORD: $root_password"
      else
        fail "the database is uninitialised and no password option is set: set MARIADB_ROOT_PASSWORD (or MYSQL_ROOT_PASSWORD), MARIADB_ALLOW_EMPTY_ROOT_PASSWORD or MARIADB_RANDOM_ROOT_PASSWORD"
      fi
    fi
    database=$(env_of DATABASE)
    user=$(env_of USER)
    password=$(env_of PASSWORD)
    if [ -n "$user" ] && [ -z "$password" ]; then fail "MARIADB_USER is set but MARIADB_PASSWORD is not"; fi
    if [ "$user" = root ]; then fail "MARIADB_USER=root: root is made by MARIADB_ROOT_PASSWORD"; fi

    log "initialising the empty data directory $DATADIR"
    mariadb-install-db --datadir="$DATADIR" --skip-test-db --auth-root-authentication-method=normal \
      --skip-name-resolve >/dev/null
    log "starting a temporary server (socket only)"
    "$@" --skip-networking --socket="$SOCKET" --datadir="$DATADIR" &
    pid=$!
    for _ in $(seq 1 60); do
      mariadb --protocol=socket --socket="$SOCKET" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || fail "the temporary server exited"
      sleep 1
    done
    mariadb --protocol=socket --socket="$SOCKET" -uroot -e 'SELECT 1' >/dev/null 2>&1 \
      || fail "the temporary server did not answer within 60 s"

    {
      echo "SET @@SESSION.SQL_LOG_BIN=0;"
      # mariadb-install-db also made password-less root@127.0.0.1, root@::1, root@<hostname>
      # and anonymous users: only root@localhost and root@'%' stay, with the password
      echo "DROP USER IF EXISTS ''@'localhost', root@'127.0.0.1', root@'::1';"
      echo "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\\'', @@hostname, '\\'');"
      echo "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS \\'\\'@\\'', @@hostname, '\\'');"
      echo "SET PASSWORD FOR 'root'@'localhost' = PASSWORD($(sql_string "$root_password"));"
      echo "CREATE USER 'root'@'%' IDENTIFIED BY $(sql_string "$root_password");"
      echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
      if [ -n "$database" ]; then
        echo "CREATE DATABASE IF NOT EXISTS $(sql_name "$database");"
      fi
      if [ -n "$user" ]; then
        echo "CREATE USER $(sql_string "$user")@'%' IDENTIFIED BY $(sql_string "$password");"
        if [ -n "$database" ]; then
          echo "GRANT ALL ON $(sql_name "${database//_/\\_}").* TO $(sql_string "$user")@'%';"
        fi
      fi
      echo "FLUSH PRIVILEGES;"
    } | mariadb --protocol=socket --socket="$SOCKET" -uroot
    log "users and database made"

    for f in /docker-entrypoint-initdb.d/*; do
      case "$f" in
        *.sql) log "running $f"; MYSQL_PWD=$root_password mariadb --protocol=socket --socket="$SOCKET" -uroot ${database:+"$database"} < "$f" ;;
        *.sh) log "running $f"; . "$f" ;;
        *) ;;
      esac
    done

    MYSQL_PWD=$root_password mariadb-admin --protocol=socket --socket="$SOCKET" -uroot shutdown
    wait "$pid" || true
    log "initialisation done; starting the server"
  fi
fi

exec "$@"
