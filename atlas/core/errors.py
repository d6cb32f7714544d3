"""One family for every error a user can cause and fix: the CLI prints the message, not a traceback.

Raise a subclass of `AtlasError` for bad input (spec, model, layer, data, output folder); its
message names the problem and the fix. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class AtlasError(Exception):
    """A problem in the user's input or environment, with a message that says how to fix it."""

    exit_code = 2
