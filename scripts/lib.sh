# Shared by demo.sh and bench.sh: start and stop a local control plane (nats-server,
# redis-server, the four services) under $LAB with its own free ports.
# shellcheck shell=bash

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1; see $LAB/logs" >&2
  return 1
}

# start_system BIN_DIR [extra env assignments...]
start_system() {
  local bin=$1; shift
  mkdir -p "$LAB/logs" "$LAB/nats"
  [ -f "$LAB/seal.key" ] || head -c32 /dev/urandom | base64 > "$LAB/seal.key"
  chmod 600 "$LAB/seal.key"
  local nats_port redis_port
  nats_port=$(free_port); redis_port=$(free_port)
  cat > "$LAB/env" <<ENV
export KSCTL_NATS_URL=nats://127.0.0.1:$nats_port
export KSCTL_REDIS_URL=redis://127.0.0.1:$redis_port
export KSCTL_SEAL_KEY_FILE=$LAB/seal.key
export PATH=$bin:\$PATH
ENV
  # shellcheck disable=SC1091
  . "$LAB/env"
  : > "$LAB/pids"
  nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$LAB/nats" >"$LAB/logs/nats.log" 2>&1 &
  echo $! >> "$LAB/pids"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$LAB" >"$LAB/logs/redis.log" 2>&1 &
  echo $! >> "$LAB/pids"
  wait_port "$nats_port"; wait_port "$redis_port"
  # REPLICAS (default 1) processes of each service share its durable consumer.
  : > "$LAB/service-pids"
  for svc in manager cloud-controller bootstrap-controller k8s-controller; do
    for r in $(seq 1 "${REPLICAS:-1}"); do
      local own=()
      # Only the cloud-controller serves metrics here when asked (the benchmark scrapes it).
      [ "$svc" = cloud-controller ] && [ "$r" = 1 ] && [ -n "${CLOUD_HTTP_ADDR:-}" ] && own=(KSCTL_HTTP_ADDR="$CLOUD_HTTP_ADDR")
      # The AWS benchmark's EKS endpoints (moto's) answer nobody: one k8s delivery, not twenty.
      [ "$svc" = k8s-controller ] && [ -n "${K8S_MAX_DELIVER:-}" ] && own=(KSCTL_MAX_DELIVER="$K8S_MAX_DELIVER")
      env "$@" "${own[@]}" KSCTL_REPLICA_ID="$svc-$r" "$bin/ksctl-$svc" >"$LAB/logs/$svc-$r.log" 2>&1 &
      echo $! >> "$LAB/pids"
      echo "$svc $!" >> "$LAB/service-pids"
    done
    # The manager creates the streams the controllers bind to.
    [ "$svc" = manager ] && sleep 1
  done
  sleep 1
}

stop_system() {
  [ -f "$LAB/pids" ] || return 0
  # Also stops helpers the caller recorded (e.g. moto).
  local pids
  pids=$(cat "$LAB/pids")
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  # Wait until they are gone (NATS flushes its store on the way out).
  for _ in $(seq 1 100); do
    # shellcheck disable=SC2086
    kill -0 $pids 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$LAB/pids"
}

# peak_rss: each service process's peak resident memory (VmHWM) so far, in MiB.
peak_rss() {
  while read -r svc pid; do
    awk -v s="$svc" -v p="$pid" '/^VmHWM/{printf "%s (pid %s): peak RSS %.1f MiB\n", s, p, $2/1024}' "/proc/$pid/status" 2>/dev/null
  done < "$LAB/service-pids"
}
