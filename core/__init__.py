"""The ground every app stands on: errors, money, ids, crypto, request context, logging, metrics,
the audit log, append-only rows, idempotency records, after-commit enqueueing, e-mail, the API
base view and the staff-action kit. It imports no app of this project."""
