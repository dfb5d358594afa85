#!/usr/bin/env bash
# Starts PostgreSQL, Redis and RabbitMQ when they do not answer on their usual local ports, and waits
# until each one does. Safe to run when they are already up.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  for _ in $(seq 1 "$3"); do answers "$2" && return 0; sleep 1; done
  echo "$1 did not come up on port $2" >&2
  return 1
}

if ! answers 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
  wait_for PostgreSQL 5432 30
fi
if ! answers 6379; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis 6379 30
fi
if ! answers 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
  wait_for RabbitMQ 5672 90
fi
# The port opens before the broker accepts AMQP sessions; wait until it really does.
if command -v rabbitmq-diagnostics >/dev/null; then
  for _ in $(seq 1 60); do rabbitmq-diagnostics -q check_running >/dev/null 2>&1 && break; sleep 1; done
fi
echo "services: PostgreSQL, Redis and RabbitMQ are answering"
