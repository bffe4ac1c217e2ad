# Shared helpers for scripts/demo and scripts/test. Sourced, not run.
# shellcheck shell=bash

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages only when the commands they provide are missing.
# Usage: ensure_packages "cmd:package" ...
ensure_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing missing packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq || die "apt-get update failed; install ${missing[*]} by hand"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed; install them by hand"
}

# PostgreSQL server binaries live outside PATH on Debian.
pg_bin() {
    if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] || die "no PostgreSQL server binaries found: apt-get install -y postgresql (or set PG_BIN)"
    echo "$d"
}

ensure_server_packages() {
    ensure_packages "redis-server:redis-server" "redis-cli:redis-tools" "psql:postgresql-client"
    ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || [ -n "${PG_BIN:-}" ] || {
        # The `psql` check above can pass with only the client installed.
        local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        say "installing missing package: postgresql"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null \
            || die "apt-get install postgresql failed; install it by hand"
    }
}

ensure_rust() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"
}

# Runs a command as the postgres user when we are root (initdb refuses root).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 - <<'PY' 2>/dev/null || echo 55432
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

# Starts (or reuses) a throwaway PostgreSQL under $1 and prints its URL.
start_local_pg() {
    local dir=$1 bin port
    bin=$(pg_bin)
    mkdir -p "$dir"
    if [ -f "$dir/port" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
        return
    fi
    port=$(free_port)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        rm -rf "$dir/data"
        mkdir -p "$dir/data"
        [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir"
        as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
            || die "initdb failed, see $dir/initdb.log"
    fi
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir"
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB -c maintenance_work_mem=256MB -c wal_level=logical -c max_replication_slots=16" \
        start >/dev/null || die "postgres did not start, see $dir/server.log"
    echo "$port" >"$dir/port"
    echo "postgres://postgres@127.0.0.1:$port/postgres"
}
