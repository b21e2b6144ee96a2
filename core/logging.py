"""Logging: every record carries the request id (which tasks inherit from the request that
sent them), secrets are masked before any handler sees them, and LOG_FORMAT=json writes one
JSON object a line for a log collector."""

import json
import logging
import re
from datetime import UTC, datetime

from . import context

# Shapes of the secrets that could end up in a message or an exception: our API keys, Stripe
# secret, restricted and webhook keys, client secrets of PaymentIntents and SetupIntents, and
# bearer tokens in general. Each keeps a short prefix so a log still tells which kind it was.
SECRETS = re.compile(
    r"\b(?P<keep>hbk_[A-Za-z0-9]{4})[A-Za-z0-9_]+"
    r"|\b(?P<keep2>(?:sk|rk)_(?:test|live)_)[A-Za-z0-9]+"
    r"|\b(?P<keep3>whsec_)[A-Za-z0-9+/=]+"
    r"|\b(?P<keep4>(?:pi|seti)_[A-Za-z0-9]+_secret_)[A-Za-z0-9]+"
    r"|(?P<keep5>\bBearer\s+)[A-Za-z0-9._~+/=-]+",
    re.IGNORECASE,
)
MASK = "[redacted]"


def redact(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        kept = next(group for group in match.groups() if group is not None)
        return f"{kept}{MASK}"

    return SECRETS.sub(mask, text)


class RequestContextFilter(logging.Filter):
    """Adds the current request id to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = context.request_id.get()
        return True


class RedactSecretsFilter(logging.Filter):
    """Masks secrets in the message, its arguments and any exception text, in place, so every
    handler after it (console, JSON, mail to admins) writes the masked record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message, request id, and the
    exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
