# Helpers every benchmark script sources: logging, and a bounded wait for a port.
# The caller sets BENCH_NAME.

log() { printf '[%s %s] %s\n' "${BENCH_NAME:-bench}" "$(date +%T)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Whether something answers on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits (bounded) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 100); do
    if listening "$1"; then return 0; fi
    sleep 0.1
  done
  die "nothing listens on 127.0.0.1:$1 after 10 s"
}
