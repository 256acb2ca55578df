"""The package's error base class: every problem a user can fix (bad input, bad model, bad option, missing
dependency) is an `SSAEError` with a one-line message. The CLI catches it once, in `main`: one line on stderr,
exit code 2. Subclasses also derive from the built-in type that describes them (ValueError, RuntimeError), so
callers that catch those keep working."""
from __future__ import annotations


class SSAEError(Exception):
    """A problem the user can fix, described in one line."""


class ParamError(SSAEError, ValueError):
    """A bad parameter (unknown ROI, non-finite strength, unknown mode, ...)."""
