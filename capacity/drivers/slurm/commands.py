"""Running Slurm's commands (no shell, a timeout, a minimal environment) and telling their
errors apart: transient, our configuration, or a refusal of the request."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .. import (
    ConfigurationDriverError,
    PermanentDriverError,
    TransientDriverError,
)

COMMANDS = frozenset({"scontrol", "sacctmgr", "sinfo", "scancel", "squeue"})

# Slurm's messages for "could not reach the controller (or its database) in time".
TRANSIENT_MARKERS = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "connection timed out",
    "communication connection failure",
    "zero bytes were transmitted",
    "slurm backup controller in standby mode",
    "resource temporarily unavailable",
    "unable to establish connection",
    "problem talking to the database",
    "slurmdbd",
    "insane message length",
)
# Slurm's refusals of what we asked: retrying the same request cannot help.
PERMANENT_MARKERS = (
    "overlaps with another reservation",
    "invalid node name",
    "requested nodes are busy",
    "invalid time",
    "duplicate reservation name",
    "invalid user",
    "invalid partition",
    "requested reservation is invalid",
    "invalid reservation",
)
# Refusals that mean our side is misconfigured (Slurm's permissions, accounting): every block
# would fail the same way, so they are retried while operations are told, not failed and
# refunded one by one.
CONFIGURATION_MARKERS = (
    "access denied",
    "invalid account",
)


class SlurmCommandError(Exception):
    def __init__(self, command: str, returncode: int, message: str) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode
        self.message = message


def classify(
    error: SlurmCommandError, *, controller_up: bool | None = None
) -> TransientDriverError | PermanentDriverError:
    """Transient when Slurm says it could not reach its controller or database; a
    ConfigurationDriverError (transient) when it refused us for our configuration; permanent
    when it refused the request itself. Anything else ("Unexpected message received", which
    scontrol create says when the controller is down) is transient unless the controller is
    known to be up."""
    text = error.message.lower()
    message = f"Slurm ({error.command}): {error.message}"
    if any(marker in text for marker in TRANSIENT_MARKERS):
        return TransientDriverError(message)
    if any(marker in text for marker in CONFIGURATION_MARKERS):
        return ConfigurationDriverError(message)
    if any(marker in text for marker in PERMANENT_MARKERS) or controller_up:
        return PermanentDriverError(message)
    return TransientDriverError(message)


# --- Running commands -------------------------------------------------------------------------
class Runner:
    """Runs one Slurm command: list arguments, no shell, a timeout, TZ=UTC and SLURM_CONF."""

    def __init__(self, *, bin_dir: str = "", conf: str = "", timeout: float = 10.0) -> None:
        self.bin_dir = bin_dir
        self.conf = conf
        self.timeout = timeout

    def env(self) -> dict[str, str]:
        # Only what Slurm's commands need: not our secrets, nor a surrounding Slurm job's
        # SLURM_JOB_ID and the like.
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "TZ": "UTC",
            "LC_ALL": "C",
        }
        if self.conf:
            env["SLURM_CONF"] = self.conf
        return env

    def path(self, command: str) -> str:
        if command not in COMMANDS:
            raise ValueError(f"Not a Slurm command we run: {command}")
        return str(Path(self.bin_dir) / command) if self.bin_dir else command

    def __call__(self, command: str, *args: str) -> str:
        """stdout on success; SlurmCommandError with Slurm's message when it exits non-zero;
        TransientDriverError on a timeout or a missing command."""
        argv = [self.path(command), *args]
        try:
            proc = subprocess.run(  # noqa: S603 - list arguments, validated, no shell
                argv,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TransientDriverError(
                f"Slurm ({command}) did not answer within {self.timeout:g} s."
            ) from exc
        except OSError as exc:  # not installed, or SLURM_BIN_DIR wrong: fixable by operations
            raise TransientDriverError(f"Cannot run {argv[0]}: {exc.strerror or exc}.") from exc
        if proc.returncode != 0:
            text = proc.stderr.strip() or proc.stdout.strip() or "no message"
            raise SlurmCommandError(command, proc.returncode, error_line(text)[:500])
        return proc.stdout


def error_line(text: str) -> str:
    """Slurm's error out of what a failed command printed: scontrol create prefixes its
    error with a multi-line "Note, unless nodes are directly requested ..." that says nothing
    about it. The lines that say "error" when there are any, else everything."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return " ".join(errors or lines)
