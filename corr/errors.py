"""Errors a user can fix, and how the commands report them.

Every error caused by what the user gave (an option, a data file, a checkpoint, an output
folder) is a :class:`UserError`, and its message names the option or file and says what to
do. ``train.py`` and ``evaluate.py`` print such an error as one line and exit with status 2
(:func:`run_command`; ``--debug`` shows the traceback instead). Anything else is a bug and
keeps its traceback.

* :class:`OptionError`: an option value out of range, unknown or in conflict with another.
* :class:`CheckpointError`: a checkpoint that cannot be read or does not fit the request.
* :class:`OutputError`: an output file that cannot be written (disk full, read-only folder),
  or an output folder holding results a run would destroy.
* ``datasets.frames.DatasetError`` (data on disk) and the other readers' errors derive from
  :class:`UserError` too.
"""
from __future__ import annotations

import errno
import sys
from typing import Callable, TypeVar

R = TypeVar("R")

#: ``OSError`` numbers that describe the user's files or disk, not a bug.
USER_OS_ERRORS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT,
                  errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EEXIST)


class UserError(Exception):
    """An error the user can fix; the message names the option or file and what to do."""


class OptionError(UserError, ValueError):
    """An option value out of range, unknown, or in conflict with another option."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be read, or that does not fit what was asked of it."""


class OutputError(UserError, OSError):
    """An output that cannot be written, or a folder holding results a run would replace."""


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix: a :class:`UserError`, or a file-system ``OSError``."""
    return isinstance(error, UserError) or (isinstance(error, OSError) and error.errno in USER_OS_ERRORS)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (an ``OSError`` as ``path: reason``)."""
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def run_command(command: Callable[[], R], debug: bool, name: str) -> R:
    """``command()``; a user error becomes ``name: error: <one line>`` on stderr and exit status 2
    (with ``debug``, the traceback as usual). ``KeyboardInterrupt`` exits with status 130."""
    try:
        return command()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        print(f"{name}: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
