"""Start-up shared by every launcher: ``cli.run(main)`` instead of ``absl.app.run(main)``.

A user mistake (a missing file, a wrong flag value, an unknown config key, a bad checkpoint
directory: ``ValueError``, ``KeyError``, ``TypeError``, ``OSError`` (missing / unreadable
files, a full disk, an unloadable ``--config`` file) and friends, or ``app.UsageError``)
ends in one line on stderr and exit status 2; ``--verbose`` shows the full traceback
instead.  Any other exception is a bug and keeps its traceback.

``cli.run(main, defer_sigterm=True)`` (the trainer) records a SIGTERM that arrives while the
launcher is still importing and parsing instead of dying; the trainer's own handler takes it
over and stops before the first step (see ``td_jax.train.trainer``).
"""
from __future__ import annotations

import signal
import sys

from absl import app, flags

flags.DEFINE_bool("verbose", False, "On an error, print the full traceback (default: one line for user mistakes).")

USER_ERRORS = (ValueError, KeyError, TypeError, OSError)


def one_line(e: BaseException) -> str:
    """``error: <message>`` for an exception (a KeyError's message without the repr quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
    text = " ".join(str(msg).split()) or type(e).__name__
    return f"error: {text} (--verbose for the traceback)"


def flag_error(flag: str, value, requirement: str) -> ValueError:
    """``ValueError("--flag=value: requirement")`` for a flag value the launcher cannot use."""
    return ValueError(f"--{flag}={value}: {requirement}")


class SigtermRecorder:
    """A SIGTERM handler that only remembers the signal (``received``) for a later handler."""

    def __init__(self):
        self.received = False

    def __call__(self, signum, frame) -> None:
        del signum, frame
        self.received = True


def run(main, *, defer_sigterm: bool = False) -> None:
    """``app.run(main)`` with user mistakes reported in one line (see the module docstring)."""
    if defer_sigterm:
        signal.signal(signal.SIGTERM, SigtermRecorder())

    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError:
            raise                     # absl prints these as a one-line usage error already
        except USER_ERRORS as e:
            if flags.FLAGS.verbose:
                raise
            print(one_line(e), file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(wrapped)
