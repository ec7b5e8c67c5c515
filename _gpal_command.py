"""The ``gpal`` console command.

It lives outside the ``gpal`` package so that a Ctrl-C while gpal and its libraries
load (~1-2 s: numba, scipy, ASE) ends in one line and exit code 130, as a Ctrl-C
later does, instead of a traceback: the console script imports this module first,
and the package inside the ``try`` below.
"""

import signal
import sys


def main() -> int:
    """Import gpal's command line and run it (:func:`gpal.cli.main`).

    A Ctrl-C while gpal loads is held until the import ends (an interrupt raised inside
    the import machinery can leave a traceback of its module locks behind), then ends
    the command with one line and 130; a second Ctrl-C interrupts at once.
    """
    interrupted = []

    def on_sigint(signum, frame):  # (only while gpal loads: this process's own entry point)
        interrupted.append(signum)
        if len(interrupted) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        try:
            from gpal.cli import main as gpal_main
        finally:
            signal.signal(signal.SIGINT, previous)
    except BaseException as exc:
        # a Ctrl-C inside a C extension's import can surface as its ImportError (numpy's
        # "PyCapsule_Import could not import module 'datetime'"): still an interrupt
        if not (isinstance(exc, KeyboardInterrupt) or interrupted):
            raise
        return _interrupted()
    if interrupted:
        return _interrupted()
    try:
        return gpal_main()
    except KeyboardInterrupt:  # (gpal_main handles its own; this is one before it began)
        return _interrupted()


def _interrupted() -> int:
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print("gpal: interrupted", file=sys.stderr)
    return 130
