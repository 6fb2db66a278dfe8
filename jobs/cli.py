"""The entry point of every ``python -m jobs.*`` command: fire, ``--help``, ``--debug``, and user
errors as a few lines instead of a traceback.

A user error (a bad flag or value, a missing file or model, a failed check) prints
``<command>: <message>`` and exits 2 for usage errors, 1 for failed checks. Anything else is a bug
of ours and keeps its traceback. ``--debug`` (or ``LLAVA_DEBUG=1``) shows the traceback of every error.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, NoReturn

import fire

DEBUG_ENV = "LLAVA_DEBUG"
USAGE_EXIT = 2
CHECKS_EXIT = 1
HELP_FLAGS = ("--help", "-h")


class UsageError(ValueError):
    """The command line cannot work as given (exit status 2)."""


class CommandFailed(Exception):
    """The command's work failed: a check before a job starts, or the job (exit status 1)."""


def _fail(command: str, message: str, status: int) -> NoReturn:
    print(f"{command}: {message}", file=sys.stderr)
    raise SystemExit(status)


def run(main: Callable[..., Any], command: str, help_text: Callable[[list[str]], str] | None = None,
        argv: list[str] | None = None) -> None:
    """Run ``main`` with fire as ``python -m <command>``.

    ``help_text(args)`` answers ``--help`` for commands whose flags fire cannot list (``**flags``);
    without it fire's own help is shown.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    args = [a for a in args if a != "--debug"]
    if any(a in HELP_FLAGS for a in args):
        if help_text is None:
            args = [a for a in args if a not in HELP_FLAGS] + ["--", "--help"]
        else:
            print(help_text([a for a in args if a not in HELP_FLAGS]))
            return
    from jobs.quiet import quiet

    quiet()
    try:
        fire.Fire(main, command=args, name=command)
    except CommandFailed as e:
        if debug:
            raise
        _fail(command, str(e), CHECKS_EXIT)
    except (ValueError, OSError) as e:  # bad flags, values, files, models: the message names them
        if debug:
            raise
        hint = "" if isinstance(e, UsageError) else f"\n  (--debug or {DEBUG_ENV}=1 shows the traceback)"
        _fail(command, f"{e}{hint}", USAGE_EXIT)
    except KeyboardInterrupt:
        _fail(command, "interrupted", 130)
