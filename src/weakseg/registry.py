"""One registry type for models, losses, data sets and annotators.

Names are looked up case-sensitively; an unknown name raises a
:class:`~weakseg.errors.WeaksegError` listing close matches (as timm does).
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from weakseg.errors import WeaksegError

__all__ = ["Registry", "check_kwargs", "did_you_mean"]

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _signature(factory: Any) -> inspect.Signature | None:
    for eval_str in (True, False):  # annotations as types where they resolve
        try:
            return inspect.signature(factory, eval_str=eval_str)
        except (TypeError, ValueError, NameError, AttributeError):
            continue
    return None


def _type_problem(value: Any, annotation: Any) -> str | None:
    """What is wrong with ``value`` for ``annotation`` (``None`` when it fits or is unknown).

    Understands the annotations of registered factories: ``int``, ``float``, ``bool``,
    ``str``, paths, unions with ``None``, sequences and mappings. Floats must be finite.
    """
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, str):
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        problems = [_type_problem(value, a) for a in options if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if annotation is type(None):
        return None if value is None else "must be empty (null)"
    if annotation is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be an integer"
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if annotation is str:
        return None if isinstance(value, str) else "must be a string"
    if isinstance(annotation, type) and issubclass(annotation, os.PathLike):
        return None if isinstance(value, (str, os.PathLike)) else "must be a path"
    container = origin or annotation
    if container in (list, tuple, Sequence) or (
        isinstance(container, type) and issubclass(container, Sequence)
        and not issubclass(container, str)
    ):
        if not isinstance(value, (list, tuple)):
            return "must be a list, e.g. [1, 2]"
        args = typing.get_args(annotation)
        if args and (len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis)):
            for item in value:
                problem = _type_problem(item, args[0])
                if problem:
                    return f"must be a list whose items each {problem.removeprefix('must ')}"
        return None
    if container in (dict, Mapping) or (isinstance(container, type)
                                        and issubclass(container, Mapping)):
        return None if isinstance(value, dict) else "must be a mapping, e.g. {a: 1}"
    return None


def check_kwargs(
    factory: Any, kwargs: dict[str, Any], what: str, injected: tuple[str, ...] = ()
) -> None:
    """Reject keyword arguments ``factory`` does not accept (suggesting close names), and
    values whose type does not fit the parameter's annotation (non-finite floats included).

    ``injected`` names the arguments the caller fills in from the data (e.g. ``num_classes``);
    together with the keywords a ``functools.partial`` already binds, a user may not set them.
    """
    sig = _signature(factory)
    if sig is None:
        return
    fixed = set(injected) | set(getattr(factory, "keywords", None) or {})
    for key in kwargs:
        if key in fixed:
            raise WeaksegError(f"parameter '{key}' of {what} is set by weakseg (from the data or "
                               "the registered name); remove it")
    params = sig.parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        allowed = [n for n, p in params.items()
                   if p.kind is not inspect.Parameter.VAR_POSITIONAL and n not in fixed]
        for key in kwargs:
            if key not in allowed:
                raise WeaksegError(
                    f"unknown parameter '{key}' for {what}{did_you_mean(key, allowed)}; "
                    f"allowed: {', '.join(allowed) or 'none'}"
                )
    for key, value in kwargs.items():
        if key not in params:
            continue
        problem = _type_problem(value, params[key].annotation)
        if problem:
            default = params[key].default
            example = "" if default is inspect.Parameter.empty or default is None else (
                f" (default {default!r})")
            raise WeaksegError(f"parameter '{key}' of {what} {problem}{example}, got {value!r}")


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
        """Check ``kwargs`` against the factory's signature, then call it; a ``ValueError``
        the factory raises about its arguments becomes a one-line :class:`WeaksegError`."""
        factory = self.get(name)
        check_kwargs(factory, kwargs, f"{self.kind} '{name}'")
        try:
            return factory(**kwargs)  # type: ignore[operator]
        except WeaksegError:
            raise
        except ValueError as exc:
            raise WeaksegError(f"invalid parameters for {self.kind} '{name}': {exc}") from exc

    def names(self) -> list[str]:
        return sorted(self._entries)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
