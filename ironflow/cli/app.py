"""``APP`` arguments: ``module:engine`` (an ``Engine``) or ``module:function`` (a declared one)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

import attrs

from ironflow.cli.db import db_path, open_engine, same_database
from ironflow.cli.errors import CLIError, one_line
from ironflow.commands import Function
from ironflow.runtime import Engine


@attrs.frozen
class App:
    """What an ``APP`` argument names: an engine, or functions, or a bare generator function."""

    spec: str
    engine: Engine | None = None
    functions: dict[str, Function] = attrs.Factory(dict)
    flow: Any = None  # a plain generator function (``replay`` only)

    def function(self, function_id: str) -> Function:
        """The function ``function_id`` of this app; ``CLIError`` naming the known ones."""
        found = self.functions.get(function_id)
        if found is None and self.flow is not None:
            raise CLIError(self._plain())
        if found is None:
            known = ", ".join(repr(fid) for fid in sorted(self.functions)) or "none"
            raise CLIError(f"unknown function {function_id!r}; {self.spec} declares {known}")
        return found

    def flow_for(self, function_id: str) -> Any:
        """The workflow to replay a recorded run of ``function_id`` with."""
        return self.flow if self.flow is not None else self.function(function_id)

    def _plain(self) -> str:
        return (
            f"{self.spec} is a plain generator function; declare it with "
            f"@ironflow.function(id=...) to run it"
        )

    def close(self, engine: Engine) -> None:
        """Close ``engine`` if the CLI opened it (an app's own engine is the app's)."""
        if engine is not self.engine:
            engine.close()

    def engine_on(self, url: str | None, *, create: bool) -> Engine:
        """The engine to run this app on the database ``--db`` names.

        ``module:engine`` is used as it is unless ``--db`` (or ``$IRONFLOW_DB``) names another
        database; then a new engine with the same clock, lease and durability runs its
        functions there. ``module:function`` gets a new engine on ``--db``.
        """
        source = self.engine
        if source is not None and (url is None or same_database(db_path(url), source.store.path)):
            return source
        if self.flow is not None:
            raise CLIError(self._plain())
        settings: dict[str, Any] = {}
        if source is not None:
            settings = {
                "clock": source.clock,
                "lease": source.lease,
                "poll": source.poll,
                "durability": source.store.durability,
            }
        engine = open_engine(db_path(url), create=create, **settings)
        for function in self.functions.values():
            engine.register(function)
        return engine


def load_app(spec: str) -> App:
    """Import ``module:attribute`` from the working directory and say what it is."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name.strip() or not attribute.strip():
        raise CLIError(f"APP must look like module:engine or module:function, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise CLIError(
                f"cannot import {module_name!r} from {cwd}: no module named {missing!r}"
            ) from None
        raise CLIError(f"importing {module_name!r} failed: {one_line(exc)}") from None
    except Exception as exc:
        raise CLIError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {one_line(exc)}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(target, Engine):
        return App(spec, engine=target, functions=dict(target.functions))
    if isinstance(target, Function):
        return App(spec, functions={target.id: target})
    if inspect.isgeneratorfunction(target):
        return App(spec, flow=target)
    raise CLIError(
        f"{spec} is a {type(target).__name__}, not an ironflow Engine or a function declared "
        f"with @ironflow.function"
    )
