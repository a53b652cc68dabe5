"""The JSON API's routes: each checks its input, calls one engine method, and answers.

Engine calls block (they hold the store's lock and write transactions), so every handler runs
in Litestar's thread pool (``sync_to_thread=True``). Input the engine refuses is a 400 naming
the bad value; an unknown run or function a 404; a state that forbids the action a 409.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from ironflow.history import dumps
from ironflow.runtime import Engine
from ironflow.runtime.models import STATUSES, TERMINAL
from ironflow.server.errors import ApiError, ErrorBody
from ironflow.server.schemas import (
    CancelBody,
    EmitBody,
    Emitted,
    ForkBody,
    FunctionOut,
    Functions,
    Health,
    RunOut,
    RunsPage,
    StartBody,
    Started,
    run_out,
)

MAX_PAGE = 1000  # runs per page at most


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    words = {400: "bad input", 404: "unknown run or function", 409: "the run's state forbids it"}
    return {
        code: ResponseSpec(
            data_container=ErrorBody,
            description=words.get(code, "error"),
            generate_examples=False,
        )
        for code in (*codes, 401)
    }


def _run(engine: Engine, run_id: str) -> Any:
    try:
        return engine.get_run(run_id)
    except KeyError:
        raise ApiError(404, f"no run with id {run_id!r}") from None


def _bad(exc: Exception) -> ApiError:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return ApiError(400, str(text))


# --- events and starts --------------------------------------------------------------------


@post("/api/events", sync_to_thread=True, status_code=200, responses=_errors(400))
def emit(engine: NamedDependency[Engine], data: JSONBody[EmitBody]) -> Emitted:
    """Emit an event: start the functions it triggers and satisfy matching waits."""
    try:
        event_id, run_ids = engine.emit_event(
            data.name, data.data, idempotency_key=data.idempotency_key
        )
    except (TypeError, ValueError) as exc:
        raise _bad(exc) from None
    return Emitted(event_id=event_id, run_ids=run_ids)


@post(
    "/api/functions/{function_id:str}/runs",
    sync_to_thread=True,
    status_code=200,
    responses=_errors(400, 404, 409),
)
def start(
    engine: NamedDependency[Engine],
    function_id: FromPath[str],
    data: JSONBody[StartBody | None] = None,
) -> Started:
    """Start a run of a registered function; a given ``run_id`` is an idempotency key."""
    body = data or StartBody()
    try:
        engine.check_function(function_id)
    except ValueError as exc:
        raise ApiError(404, str(exc)) from None
    if body.run_id is not None:
        try:
            found = engine.get_run(body.run_id)
        except KeyError:
            found = None
        except ValueError as exc:
            raise _bad(exc) from None
        if found is not None and found.function != function_id:
            raise ApiError(
                409,
                f"run id {body.run_id!r} already belongs to a run of {found.function!r}, "
                f"not {function_id!r}",
            )
    try:
        run_id = engine.start(function_id, body.data, run_id=body.run_id)
    except (TypeError, ValueError) as exc:
        raise _bad(exc) from None
    return Started(run_id=run_id)


@get("/api/functions", sync_to_thread=True, responses=_errors())
def functions(engine: NamedDependency[Engine]) -> Functions:
    """The functions registered in the database, with triggers and settings."""
    found = [
        FunctionOut(
            id=item["id"],
            triggers=item["triggers"],
            settings=item["settings"],
            code_version=item["code_version"],
            live=item["live"],
        )
        for item in engine.registered_functions()
    ]
    return Functions(functions=found)


# --- runs ---------------------------------------------------------------------------------


@get("/api/runs", sync_to_thread=True, responses=_errors(400))
def list_runs(
    engine: NamedDependency[Engine],
    status: FromQuery[str | None] = None,
    function: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
    cursor: FromQuery[str | None] = None,
    created_after: Annotated[
        str | None,
        QueryParameter(description="ISO 8601 time with offset: runs created at or after it"),
    ] = None,
    created_before: Annotated[
        str | None,
        QueryParameter(description="ISO 8601 time with offset: runs created before it"),
    ] = None,
) -> RunsPage:
    """Runs, newest first, a page at a time (``next_cursor`` is ``null`` on the last page)."""
    if status is not None and status not in STATUSES:
        raise ApiError(
            400, f"unknown run status {status!r}; a run is one of: {', '.join(STATUSES)}"
        )
    try:
        page = engine.list_runs_page(
            status=status,
            function=function,
            limit=limit,
            cursor=cursor,
            created_after=created_after,
            created_before=created_before,
        )
    except (TypeError, ValueError) as exc:
        raise _bad(exc) from None
    return RunsPage(runs=[run_out(run) for run in page.runs], next_cursor=page.next_cursor)


@get("/api/runs/{run_id:str}", sync_to_thread=True, responses=_errors(404))
def get_run(engine: NamedDependency[Engine], run_id: FromPath[str]) -> RunOut:
    """The run, as ``Engine.get_run`` gives it."""
    return run_out(_run(engine, run_id))


@get(
    "/api/runs/{run_id:str}/history",
    sync_to_thread=True,
    responses={
        200: ResponseSpec(
            data_container=list[dict[str, Any]],
            description="the history events, as `ironflow runs export` writes them",
            generate_examples=False,
        ),
        **_errors(404),
    },
    media_type="application/json",
)
def history(engine: NamedDependency[Engine], run_id: FromPath[str]) -> Response[bytes]:
    """The run's history in the export format (what ``ironflow runs export`` writes)."""
    _run(engine, run_id)
    try:
        events = engine.history(run_id)
    except KeyError:
        raise ApiError(404, f"no run with id {run_id!r}") from None
    # The export codec's exact text, sent as it is (parsing it to encode it again would
    # cost more than the whole read).
    return Response(content=dumps(events, indent=None).encode(), media_type="application/json")


@post(
    "/api/runs/{run_id:str}/cancel",
    sync_to_thread=True,
    status_code=200,
    responses=_errors(400, 404, 409),
)
def cancel(
    engine: NamedDependency[Engine], run_id: FromPath[str], data: JSONBody[CancelBody | None] = None
) -> RunOut:
    """Cancel a run and its child runs (a running one at its next step boundary)."""
    body = data or CancelBody()
    run = _run(engine, run_id)
    if run.status in TERMINAL:
        raise ApiError(409, f"run {run_id!r} is {run.status}; it cannot be cancelled")
    try:
        engine.cancel(run_id, compensate=body.compensate, reason=body.reason)
    except (TypeError, ValueError) as exc:
        raise _bad(exc) from None
    return run_out(_run(engine, run_id))


@post(
    "/api/runs/{run_id:str}/resume",
    sync_to_thread=True,
    status_code=200,
    responses=_errors(404, 409),
)
def resume(engine: NamedDependency[Engine], run_id: FromPath[str]) -> RunOut:
    """Resume a failed run (the failed step runs again) or a blocked one (after a fix)."""
    _run(engine, run_id)
    try:
        engine.resume(run_id)
    except ValueError as exc:
        raise ApiError(409, str(exc)) from None
    return run_out(_run(engine, run_id))


@post(
    "/api/runs/{run_id:str}/rerun",
    sync_to_thread=True,
    status_code=200,
    responses=_errors(404, 409),
)
def rerun(engine: NamedDependency[Engine], run_id: FromPath[str]) -> Started:
    """Start a new run of the same function with the same triggering event."""
    _run(engine, run_id)
    try:
        new_id = engine.rerun(run_id)
    except ValueError as exc:
        raise ApiError(409, str(exc)) from None
    return Started(run_id=new_id)


@post(
    "/api/runs/{run_id:str}/fork",
    sync_to_thread=True,
    status_code=200,
    responses=_errors(400, 404, 409),
)
def fork(
    engine: NamedDependency[Engine], run_id: FromPath[str], data: JSONBody[ForkBody]
) -> Started:
    """A new run keeping the steps recorded before ``from_step``, run on with current code."""
    _run(engine, run_id)
    try:
        new_id = engine.fork(run_id, data.from_step)
    except ValueError as exc:  # no such step in the run (the message lists its steps)
        raise _bad(exc) from None
    return Started(run_id=new_id)


# --- service ------------------------------------------------------------------------------


@get("/healthz", sync_to_thread=False)
def healthz() -> Health:
    """Liveness: answers without a token and without touching the database."""
    return Health(status="ok")


ROUTES = [
    emit,
    start,
    functions,
    list_runs,
    get_run,
    history,
    cancel,
    resume,
    rerun,
    fork,
    healthz,
]
