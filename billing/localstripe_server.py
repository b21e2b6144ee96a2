"""Run the localstripe emulator for development and tests: loopback only, private state.

The stock `localstripe` command listens on every interface and pickles its state to one fixed
file in the system temp folder, so two runs on one machine would share (and corrupt) each other's
data. This entry point binds 127.0.0.1 and keeps state in memory, or in the file given.
It also answers what localstripe lacks: Stripe's standalone invoices, invoice items on them,
credit notes and invoice payments (billing.localstripe_api), with their webhooks.

    python -m billing.localstripe_server --port 8420 [--state var/localstripe.pickle]
        [--webhook-url http://127.0.0.1:8000/stripe/webhook/ --webhook-secret whsec_...]
"""

import argparse
import logging
import pickle
import socket
from pathlib import Path

from aiohttp import web
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--state", type=Path, default=None, help="keep state in this file")
    parser.add_argument("--webhook-url", help="deliver signed events to this URL")
    parser.add_argument("--webhook-secret", help="sign them with this secret")
    args = parser.parse_args()
    _use_state_file(args.state)
    localstripe_api.install(server.app)
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
