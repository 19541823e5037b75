"""Domain errors: raised deep down, turned into a message only at the edge
(the terminal, or an `error` event on the protocol)."""
from __future__ import annotations

from blender_addon.protocol import ErrorCode

__all__ = ["ReconstructError", "Cancelled", "ErrorCode"]


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
