"""The two ways reading a scene fails, so every reader and command line tells them apart the same way.

- ``SceneError``: the scene or recording cannot be read at all (missing, empty, no metadata, unreadable container).
  A command prints its one line, which names the file and the reason, and exits non-zero.
- ``FrameError``: one frame cannot be read (a truncated or empty image, a wrong size, a pose that is not a rigid
  transform). Its message names the file or the message time. Long runs skip the frame, count it and go on
  (``--strict`` stops instead).
"""
from __future__ import annotations

__all__ = ["SceneError", "FrameError"]


class SceneError(ValueError):
    """A scene or recording that cannot be read at all."""


class FrameError(ValueError):
    """One unreadable frame of an otherwise readable scene."""
