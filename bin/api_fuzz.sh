#!/usr/bin/env bash
# Property-based tests of the REST API from its own OpenAPI schema (schemathesis, configured by
# schemathesis.toml): a server on loopback with demo data, localstripe, and a key acting for the
# demo organization's owner with every scope; every check, stateful links included; any failure
# fails the run. Ports: FUZZ_PORT (8765) and FUZZ_STRIPE_PORT (8766).
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
  --scope usage:write --scope inference --scope keys:read --scope keys:write 2>"$work/key.txt")
# "Key <public id> for demo, ...": the hooks keep the run from revoking its own key.
FUZZ_KEY_ID=$(sed -n 's/^Key \([^ ]*\) for .*/\1/p' "$work/key.txt")
export FUZZ_KEY_ID
# The model gateway's own key (a platform organization's): only it may verify other keys.
.venv/bin/python manage.py shell -c "from accounts.models import Organization
Organization.objects.get_or_create(slug='gateway', defaults={'name': 'Model gateway',
    'billing_email': 'gateway@example.com', 'is_platform': True})"
FUZZ_GATEWAY_KEY=$(.venv/bin/python manage.py create_api_key --org gateway --name fuzz \
  --scope usage:write 2>/dev/null)
export FUZZ_GATEWAY_KEY
# The newest key, which the link from the key list to revoking leads to.
.venv/bin/python manage.py create_api_key --org demo --name fuzz-spare --user demo@example.com \
  >/dev/null 2>&1
# No request-line limit: every generated request reaches the application (in production the
# proxy in front sets its own limits).
.venv/bin/python -m gunicorn portal.wsgi --workers 2 --limit-request-line 0 --bind "127.0.0.1:$port" >"$work/web.log" 2>&1 &
web_pid=$!
trap 'kill $web_pid $stripe_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 60); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.5; done
PYTHONPATH=. .venv/bin/st run "http://127.0.0.1:$port/api/v1/schema/" \
  --header "Authorization: Bearer $key" --checks all \
  ${FUZZ_SEED:+--seed "$FUZZ_SEED"} ${FUZZ_EXAMPLES:+--max-examples "$FUZZ_EXAMPLES"} \
  ${FUZZ_MAX_TIME:+--max-time "$FUZZ_MAX_TIME"} "$@" || {
  status=$?
  echo "--- the server's log, for the failures above"
  tail -n 200 "$work/web.log"
  exit $status
}
