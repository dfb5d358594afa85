#!/usr/bin/env bash
# The alert rules are code: `promtool check rules` checks their syntax and PromQL, `promtool test rules` runs
# deploy/prometheus/alerts.test.yml (every alert firing, and staying quiet). Installs nothing: .ci/run
# installs promtool when it is missing; elsewhere `apt-get install prometheus` (Debian ships promtool in it).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found; install it with: apt-get update && apt-get install -y --no-install-recommends prometheus" >&2
  exit 1
fi
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
