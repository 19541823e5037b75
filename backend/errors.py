"""Domain errors: raised deep down, turned into a message only at the edge
(the terminal, or an `error` event on the protocol)."""
from __future__ import annotations

import errno

from blender_addon.shared.protocol import ErrorCode

__all__ = ["ReconstructError", "Cancelled", "ErrorCode", "file_error"]


class ReconstructError(Exception):
    """Something the user can act on: `message` says what happened, `hint`
    what to do about it."""

    def __init__(self, code: str, message: str, hint: str = "", details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.details = details or {}

    def as_fields(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint, "details": self.details}


class Cancelled(Exception):
    """The user asked to stop; finished stages are kept."""


_OS_ERROR_ADVICE = {
    errno.ENOSPC: ("the disk is full", "Free some space on that disk (or choose a workspace on another disk), "
                   "then run again: finished stages are kept."),
    errno.EDQUOT: ("the disk quota is used up", "Free some space (or choose a workspace on another disk), then "
                   "run again: finished stages are kept."),
    errno.EACCES: ("permission denied", "Make the file and its folder writable for you (or choose another "
                   "workspace), then run again."),
    errno.EPERM: ("the operation is not permitted", "Make the file and its folder writable for you (or choose "
                  "another workspace), then run again."),
    errno.EROFS: ("the disk is read-only", "Choose a workspace on a disk you can write to, then run again."),
    errno.ELOOP: ("it is a link that points to itself (a loop of symbolic links)",
                  "Remove or fix the link, then run again."),
    errno.ENAMETOOLONG: ("its path is too long", "Choose a folder with a shorter path."),
    errno.EIO: ("the disk reported a read/write error", "Check the disk (or copy the files to another one), "
                "then run again."),
}


def file_error(exc: OSError, doing: str) -> ReconstructError:
    """A user's message for an OS error: which file, what happened, what to do.
    `doing` says what we were doing ("writing the dense point cloud")."""
    name = exc.filename if exc.filename is not None else "a file"
    what, hint = _OS_ERROR_ADVICE.get(exc.errno, (exc.strerror or str(exc), "Check the file and run again: "
                                                  "finished stages are kept."))
    return ReconstructError(ErrorCode.FILE_ERROR, f"Could not finish {doing}: {name}: {what}.", hint,
                            {"errno": exc.errno, "file": None if exc.filename is None else str(exc.filename),
                             "error": str(exc)})
