#!/usr/bin/env bash
# Property-based tests of the REST API from its own OpenAPI schema (schemathesis): a server on
# loopback with demo data, localstripe, and a key with every scope; any 5xx fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
port=${FUZZ_PORT:-8765}
stripe_port=${FUZZ_STRIPE_PORT:-8766}
export DJANGO_SETTINGS_MODULE=portal.settings.local DJANGO_DEBUG=false
export DATABASE_URL="sqlite:///$work/fuzz.sqlite3" CELERY_BROKER_URL=filesystem://localhost/
export CELERY_BROKER_DIR="$work/broker" CACHE_URL=locmemcache:// API_RATE_LIMIT=100000
export STRIPE_SECRET_KEY=sk_test_fuzz STRIPE_API_BASE="http://127.0.0.1:$stripe_port"
export STRIPE_WEBHOOK_SECRET=whsec_fuzz DEMO_PASSWORD=fuzz-only-password
.venv/bin/python -m billing.localstripe_server --port "$stripe_port" >"$work/stripe.log" 2>&1 &
stripe_pid=$!
trap 'kill $stripe_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 60); do curl -s "http://127.0.0.1:$stripe_port/" >/dev/null && break; sleep 0.5; done
.venv/bin/python manage.py migrate --no-input -v0
.venv/bin/python manage.py seed_demo >/dev/null  # with localstripe up: invoices are issued
# The key acts for the demo organization's owner, so its write scopes can act.
key=$(.venv/bin/python manage.py create_api_key --org demo --name fuzz --user demo@example.com \
  --scope reservations:read --scope reservations:write --scope billing:read \
  --scope usage:write --scope inference --scope keys:read --scope keys:write)
.venv/bin/python -m gunicorn portal.wsgi --workers 2 --bind "127.0.0.1:$port" >"$work/web.log" 2>&1 &
web_pid=$!
trap 'kill $web_pid $stripe_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 60); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.5; done
.venv/bin/st run "http://127.0.0.1:$port/api/v1/schema/" \
  --header "Authorization: Bearer $key" --checks not_a_server_error \
  --max-examples "${FUZZ_EXAMPLES:-30}" --request-timeout 20 \
  --seed "${FUZZ_SEED:-20261126}" --generation-deterministic
