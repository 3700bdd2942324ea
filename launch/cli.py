"""Start-up shared by every launcher: ``cli.run(main)`` instead of ``absl.app.run(main)``.

A user mistake (a missing file, a wrong flag value, an unknown config key, a bad checkpoint
directory: ``ValueError``, ``KeyError``, ``TypeError``, ``FileNotFoundError`` and friends, or
``app.UsageError``) ends in one line on stderr and exit status 2; ``--verbose`` shows the
full traceback instead.  Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys

from absl import app, flags

flags.DEFINE_bool("verbose", False, "On an error, print the full traceback (default: one line for user mistakes).")

USER_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FileExistsError)


def one_line(e: BaseException) -> str:
    """``error: <message>`` for an exception (a KeyError's message without the repr quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
    text = " ".join(str(msg).split()) or type(e).__name__
    return f"error: {text} (--verbose for the traceback)"


def run(main) -> None:
    """``app.run(main)`` with user mistakes reported in one line (see the module docstring)."""
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
