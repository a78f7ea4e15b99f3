"""One registry type for models, losses, data sets and annotators.

Names are looked up case-sensitively; an unknown name raises a
:class:`~weakseg.errors.WeaksegError` listing close matches (as timm does).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from weakseg.errors import WeaksegError

__all__ = ["Registry", "check_kwargs", "did_you_mean"]

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_kwargs(factory: Any, kwargs: dict[str, Any], what: str) -> None:
    """Reject keyword arguments ``factory`` does not accept, suggesting close names."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in kwargs:
        if key not in allowed:
            raise WeaksegError(
                f"unknown parameter '{key}' for {what}{did_you_mean(key, allowed)}; "
                f"allowed: {', '.join(allowed) or 'none'}"
            )


class Registry(Generic[T]):
    """Maps names to factories; ``kind`` names what is registered (for messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise WeaksegError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, list(self._entries))}; "
                f"available: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        factory = self.get(name)
        check_kwargs(factory, kwargs, f"{self.kind} '{name}'")
        return factory(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
