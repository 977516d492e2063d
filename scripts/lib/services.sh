# Shared by scripts/test and scripts/bench: make sure the real servers the
# tests need are there. A server that already answers on its standard
# loopback port is used as is; otherwise the Debian package is installed and
# a throwaway instance is started on loopback (stopped again on exit).
# Sourced, not run: it exports the variables the tests read.

SERVICES_DIR=$(mktemp -d /tmp/sse-services.XXXXXX)
SERVICES_PIDS=()

services_cleanup() {
  if [ -n "${OWN_RABBIT_NODE:-}" ]; then
    "$SERVICES_DIR/rabbitmqctl" -q stop >/dev/null 2>&1 || true
  fi
  for pid in "${SERVICES_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$SERVICES_DIR"
}

apt_updated=${apt_updated:-0}
apt_install() { # apt_install <package>...
  if [ "$apt_updated" = 0 ]; then
    echo "==> apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  echo "==> installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

port_answers() { # port_answers <port>
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_port() { # wait_port <port> <seconds>
  local i
  for ((i = 0; i < $2 * 10; i++)); do port_answers "$1" && return 0; sleep 0.1; done
  return 1
}

ensure_rabbitmq() {
  # The RabbitMQ restart test starts its own node, so the server binary must exist either way.
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_install rabbitmq-server
  if port_answers 5672 && rabbitmqctl -q status >/dev/null 2>&1; then
    echo "==> using the RabbitMQ already running on 127.0.0.1:5672"
    export SSE_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
    export SSE_TEST_RABBITMQCTL="rabbitmqctl"
    return
  fi
  echo "==> starting a throwaway RabbitMQ node on 127.0.0.1:5682"
  local d="$SERVICES_DIR/rabbit"
  mkdir -p "$d"/{mnesia,log,home}
  : >"$d/rabbitmq.conf"
  echo '[].' >"$d/enabled_plugins"
  cat >"$SERVICES_DIR/rabbit.env" <<ENV
export HOME=$d/home ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_NODENAME=ssetest@localhost
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5682 RABBITMQ_DIST_PORT=25682
export RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf
export RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
ENV
  printf '#!/usr/bin/env bash\n. %s\nexec /usr/lib/rabbitmq/bin/rabbitmqctl -n ssetest@localhost "$@"\n' \
    "$SERVICES_DIR/rabbit.env" >"$SERVICES_DIR/rabbitmqctl"
  chmod +x "$SERVICES_DIR/rabbitmqctl"
  (. "$SERVICES_DIR/rabbit.env" && setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$d/server.log" 2>&1 &)
  OWN_RABBIT_NODE=1
  local i
  for ((i = 0; i < 120; i++)); do
    "$SERVICES_DIR/rabbitmqctl" -q await_startup --timeout 5 >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$SERVICES_DIR/rabbitmqctl" -q await_startup --timeout 5 || { cat "$d/server.log"; echo "RabbitMQ did not start" >&2; return 1; }
  export SSE_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:5682/%2f"
  export SSE_TEST_RABBITMQCTL="$SERVICES_DIR/rabbitmqctl"
}

ensure_mosquitto() {
  if port_answers 1883; then
    echo "==> using the Mosquitto already running on 127.0.0.1:1883"
    export SSE_TEST_MQTT_URL="mqtt://127.0.0.1:1883"
    return
  fi
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
  echo "==> starting a throwaway Mosquitto on 127.0.0.1:18830"
  printf 'listener 18830 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stdout\n' >"$SERVICES_DIR/mosquitto.conf"
  /usr/sbin/mosquitto -c "$SERVICES_DIR/mosquitto.conf" >"$SERVICES_DIR/mosquitto.log" 2>&1 &
  SERVICES_PIDS+=($!)
  wait_port 18830 10 || { cat "$SERVICES_DIR/mosquitto.log"; echo "Mosquitto did not start" >&2; return 1; }
  export SSE_TEST_MQTT_URL="mqtt://127.0.0.1:18830"
}

ensure_browser() { # Debian chromium + node for the dashboard test (playwright-core, no browser download)
  [ -x /usr/bin/chromium ] || apt_install chromium
  command -v node >/dev/null 2>&1 || apt_install nodejs
  command -v npm >/dev/null 2>&1 || apt_install npm
  if [ ! -d crates/sse-hub/browser-test/node_modules/playwright-core ]; then
    echo "==> npm ci (crates/sse-hub/browser-test)"
    (cd crates/sse-hub/browser-test && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

ensure_python_venv() { # ensure_python_venv <dir>: a venv for the Python package's tests (kept between runs)
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
}
