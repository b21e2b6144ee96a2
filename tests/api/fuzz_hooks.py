"""Schemathesis hooks for bin/api_fuzz.sh: the run must not revoke the key it authenticates
with (every later request would be a 401 and test nothing)."""

import os

import schemathesis

OWN_KEY = os.environ.get("FUZZ_KEY_ID", "")
REVOKE = "/keys/{public_id}/revoke/"


@schemathesis.hook
def before_call(context, case, kwargs):
    if OWN_KEY and case.path.endswith(REVOKE) and case.path_parameters.get("public_id") == OWN_KEY:
        case.path_parameters["public_id"] = "key_not_the_runs_own"
