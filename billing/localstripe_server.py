"""Run the localstripe emulator for development and tests: loopback only, private state.

The stock `localstripe` command listens on every interface and pickles its state to one fixed
file in the system temp folder, so two runs on one machine would share (and corrupt) each other's
data. This entry point binds 127.0.0.1 and keeps state in memory, or in the file given.
It also answers what localstripe lacks: Stripe's standalone invoices, invoice items on them,
credit notes and invoice payments (billing.localstripe_api), with their webhooks; and it serves
its own Stripe.js stand-in (localstripe_stripe.js: a card Element that takes a number typed
with spaces, createPaymentMethod, one 3-D Secure prompt per payment, errors shaped as Stripe's).

    python -m billing.localstripe_server --port 8420 [--state var/localstripe.pickle]
        [--webhook-url http://127.0.0.1:8000/stripe/webhook/ --webhook-secret whsec_...]
"""

import argparse
import logging
import pickle
import socket
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler
from localstripe import resources, server, webhooks

from billing import localstripe_api


def _use_state_file(path: Path | None) -> None:
    store = resources.store

    def dump() -> None:
        if path is not None:
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as fh:
                pickle.dump(dict(store), fh, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(path)

    store.dump_to_disk = dump
    if path is not None and path.exists():
        with path.open("rb") as fh:
            store.update(pickle.load(fh))  # noqa: S301 - our own file, written just above


STRIPE_JS = Path(__file__).with_name("localstripe_stripe.js")
# What Stripe.js may do with a publishable key alone, on top of what localstripe allows.
BROWSER_KEY_PATHS = ("/v1/payment_methods",)


@web.middleware
async def stripe_js_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve our Stripe.js stand-in instead of localstripe's, and let it create a
    PaymentMethod with the publishable key (`?key=pk_...`), as Stripe.js does."""
    if request.method == "GET" and request.path.rstrip("/") == "/js.stripe.com/v3":
        return web.Response(
            text=STRIPE_JS.read_text(encoding="utf-8"),
            content_type="application/javascript",
            headers={"Cache-Control": "no-store"},
        )
    if (
        request.method == "POST"
        and request.path in BROWSER_KEY_PATHS
        and "Authorization" not in request.headers
        and request.query.get("key", "").startswith("pk_")
    ):
        headers = {**request.headers, "Authorization": "Bearer sk_from_stripe_js"}
        return await handler(request.clone(headers=headers))
    return await handler(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--state", type=Path, default=None, help="keep state in this file")
    parser.add_argument("--webhook-url", help="deliver signed events to this URL")
    parser.add_argument("--webhook-secret", help="sign them with this secret")
    args = parser.parse_args()
    _use_state_file(args.state)
    localstripe_api.install(server.app)
    server.app.middlewares.insert(0, stripe_js_middleware)
    if args.webhook_url and args.webhook_secret:
        webhooks.register_webhook("hyperblock", args.webhook_url, args.webhook_secret, None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    web.run_app(
        server.app, sock=sock, print=lambda *_: None, access_log=logging.getLogger("access")
    )


if __name__ == "__main__":
    main()
