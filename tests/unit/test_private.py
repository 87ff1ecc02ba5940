import os

from remote_agent import private


def test_private_tree_passes(tmp_path):
    (tmp_path / "endpoints").mkdir(mode=0o700)
    (tmp_path / "spec.json").write_text("{}")
    os.chmod(tmp_path / "spec.json", 0o600)
    os.chmod(tmp_path, 0o700)
    assert private.problems(private.service_paths(tmp_path)) == []


def test_writable_by_others_is_named(tmp_path):
    os.chmod(tmp_path, 0o777)
    (tmp_path / "spec.json").write_text("{}")
    os.chmod(tmp_path / "spec.json", 0o666)
    found = private.problems(private.service_paths(tmp_path))
    assert found == [f"{tmp_path} can be written by others (mode 777)",
                     f"{tmp_path / 'spec.json'} can be written by others (mode 666)"]


def test_links_and_foreign_owners_are_refused(tmp_path):
    os.chmod(tmp_path, 0o700)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "endpoints").symlink_to(tmp_path / "elsewhere")
    link = tmp_path / "endpoints"
    assert private.problems([link]) == [f"{link} is a symbolic link"]
    assert private.problems([tmp_path], uid=os.getuid() + 1) == [
        f"{tmp_path} belongs to uid {os.getuid()}, not {os.getuid() + 1}"]
