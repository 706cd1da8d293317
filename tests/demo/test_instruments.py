"""The demo's instruments listen to the app's own engine, and only while the app runs.

Listeners on SQLAlchemy's ``Engine`` class would time every engine in the process (another
app's, a test's) and outlive the app that registered them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from app.engine_events import listening
from app.main import create_app
from app.settings import Settings

Registration = tuple[Any, str, Callable[..., Any]]


def test_listening_registers_for_the_block_only() -> None:
    engine = create_engine("sqlite://")
    calls: list[str] = []

    def started(*_: object) -> None:
        calls.append("started")

    with listening(engine, {"before_cursor_execute": started}):
        assert event.contains(engine, "before_cursor_execute", started)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")

    assert calls == ["started"]
    assert not event.contains(engine, "before_cursor_execute", started)
    engine.dispose()


def test_the_demo_listens_to_its_own_engine_only_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    added: list[Registration] = []
    removed: list[Registration] = []
    listen, remove = event.listen, event.remove

    def recording_listen(target: Any, name: str, fn: Callable[..., Any], *a: Any, **k: Any) -> None:
        if fn.__module__.startswith("app."):
            added.append((target, name, fn))
        listen(target, name, fn, *a, **k)

    def recording_remove(target: Any, name: str, fn: Callable[..., Any]) -> None:
        if fn.__module__.startswith("app."):
            removed.append((target, name, fn))
        remove(target, name, fn)

    monkeypatch.setattr(event, "listen", recording_listen)
    monkeypatch.setattr(event, "remove", recording_remove)
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
        seed_rows=500,
        upload_dir=tmp_path / "uploads",
        debug_events=True,
        recommender_latency_ms=(1.0, 2.0),
        log_level="WARNING",
    )

    with TestClient(create_app(settings)) as client:
        assert client.get("/search", params={"q": "lamp"}).status_code == 200
        during = list(added)
        answered = client.get("/stats").json()

    assert during, "the instruments listened to nothing"
    assert all(isinstance(target, Engine) for target, _, _ in during)  # instances, not the class
    assert {id(target) for target, _, _ in during} == {id(during[0][0])}  # one engine: the app's
    assert sorted(map(id, map(_fn, removed))) == sorted(map(id, map(_fn, added)))
    assert answered["requests"]["completed"] == 1


def _fn(registration: Registration) -> Callable[..., Any]:
    return registration[2]
