"""Event hooks, with a real child process as the hook."""

from __future__ import annotations

import sys

from helpers import event_sink, events
from local import hooks
from local.hooks import Hooks


async def test_each_event_reaches_the_command_once_in_order(tmp_path):
    sink = tmp_path / "events.jsonl"
    told = Hooks(event_sink(sink), "model")
    told.emit("serving", job="22")
    told.emit("switched", from_job="22", to_job="23")
    await told.close()
    got = events(sink)
    assert [e["event"] for e in got] == ["serving", "switched"] and told.sent == 2
    assert got[1]["to_job"] == "23" and got[1]["service"] == "model"


async def test_a_failing_or_hanging_hook_never_stops_anything(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(hooks, "HOOK_TIMEOUT", 0.5)
    failing = Hooks(f"{sys.executable} -c 'import sys; sys.exit(\"no webhook\")'", "x")
    failing.emit("waiting")
    hanging = Hooks(f"{sys.executable} -c 'import time; time.sleep(60)'", "x")
    hanging.emit("waiting")
    missing = Hooks("/nonexistent/hook", "x")
    missing.emit("waiting")
    for each in (failing, hanging, missing):
        await each.close()
    text = caplog.text
    assert "hook=failed event=waiting code=1 said='no webhook'" in text
    assert "hook=timeout event=waiting" in text and "No such file" in text


async def test_no_command_no_process():
    quiet = Hooks("", "x")
    quiet.emit("serving")
    await quiet.close()
    assert quiet.sent == 0 and quiet._task is None
