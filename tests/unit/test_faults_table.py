"""`invoke faults-table --report`: the README's fault table from a report."""

import json

from invoke import Context

import tasks as dev_tasks


def test_the_table_names_the_kinds_of_error_a_row_lost_requests_to(tmp_path, monkeypatch):
    (tmp_path / "tests" / "faults").mkdir(parents=True)
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- faults:start -->\nold\n<!-- faults:end -->\nafter\n")
    rows = [{"fault": "a", "recovery": "b", "seconds": 1.1, "requests": 113, "failed": 1,
             "errors": ["RemoteDisconnected"]},
            {"fault": "c", "recovery": "d", "seconds": 0.0, "requests": 99, "failed": 0,
             "errors": []},
            {"fault": "e", "recovery": "f", "seconds": 2.0, "requests": 5, "failed": 0}]
    report = tmp_path / "report.jsonl"
    report.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.chdir(tmp_path)
    dev_tasks.faults_table(Context(), report=str(report))
    text = readme.read_text()
    assert "| a | b | 1.1 | 1 of 113 (RemoteDisconnected) |" in text
    assert "| c | d | 0.0 | 0 of 99 |" in text
    assert "| e | f | 2.0 | 0 of 5 |" in text  # a report from before the kinds were kept
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
