"""User-facing errors.

Every problem a user can cause (bad config, bad file, bad data) raises
:class:`WeaksegError` with a one-line message that says what is wrong and how to
fix it. The CLI prints ``error: <message>`` and exits with status 2.
"""

from __future__ import annotations

__all__ = ["WeaksegError"]


class WeaksegError(ValueError):
    """An error caused by user input; its message is one line and actionable."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
