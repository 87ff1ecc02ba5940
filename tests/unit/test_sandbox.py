"""Where the sandbox's docker/ is found: a checkout's, never a folder of
the same name in site-packages."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from local import sandbox
from local.sandbox import SandboxError


def checkout(root: Path) -> Path:
    (root / "docker").mkdir(parents=True)
    for name in ("compose.yml", "ensure-docker.sh"):
        (root / "docker" / name).write_text("")
    return root


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """As after a non-editable install: site-packages holds the packages and
    the Docker SDK's docker/, and the current directory is somewhere else."""
    site = tmp_path / "site-packages"
    (site / "docker").mkdir(parents=True)
    (site / "docker" / "__init__.py").write_text("")
    monkeypatch.setattr(sandbox, "_PACKAGE_PARENT", site)
    monkeypatch.delenv(sandbox.CHECKOUT_ENV, raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path


def test_a_checkout_finds_its_own_docker_folder():
    assert sandbox.docker_dir() == Path(__file__).resolve().parents[2] / "docker"


def test_installed_without_a_checkout_says_so_in_one_line(installed):
    with pytest.raises(SandboxError, match="needs a checkout of slurm-persist") as err:
        sandbox.Sandbox.default().image_tag()
    assert "\n" not in str(err.value) and sandbox.CHECKOUT_ENV in str(err.value)


def test_installed_and_run_in_a_checkout_uses_it(installed, monkeypatch):
    monkeypatch.chdir(checkout(installed / "clone"))
    assert sandbox.compose_file() == installed / "clone" / "docker" / "compose.yml"


def test_the_environment_names_the_checkout(installed, monkeypatch):
    monkeypatch.setenv(sandbox.CHECKOUT_ENV, str(checkout(installed / "src" / "slurm-persist")))
    assert sandbox.docker_dir() == installed / "src" / "slurm-persist" / "docker"
    monkeypatch.setenv(sandbox.CHECKOUT_ENV, str(installed / "elsewhere"))
    with pytest.raises(SandboxError, match="elsewhere"):
        sandbox.docker_dir()


def test_a_copy_in_site_packages_does_not_take_its_own_folder_for_docker(tmp_path):
    """What pip install . leaves: the packages, copied, with no docker/ beside them."""
    project = Path(__file__).resolve().parents[2]
    site = tmp_path / "site-packages"
    for package in ("local", "remote_agent"):
        shutil.copytree(project / package, site / package)
    proc = subprocess.run(
        [sys.executable, "-c",
         "from local.sandbox import Sandbox; print(Sandbox.default().image_tag())"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "HOME": str(tmp_path)},
        capture_output=True, text=True)
    assert proc.returncode != 0 and "needs a checkout of slurm-persist" in proc.stderr


def test_each_release_has_its_own_image(monkeypatch):
    """The docker/ files are the same for both releases; the tag tells them apart."""
    tags = {}
    for name in sandbox.RELEASES:
        monkeypatch.setenv(sandbox.RELEASE_ENV, name)
        tags[name] = sandbox.Sandbox.default().image_tag()
    assert tags["bookworm"] != tags["trixie"]
    assert tags["trixie"].startswith(f"{sandbox.IMAGE}:trixie-")
    monkeypatch.delenv(sandbox.RELEASE_ENV)
    assert sandbox.Sandbox.default().image_tag() == tags["bookworm"]


def test_an_unknown_release_is_refused_before_anything_is_built(monkeypatch):
    monkeypatch.setenv(sandbox.RELEASE_ENV, "buster")
    with pytest.raises(SandboxError, match="bookworm or trixie"):
        sandbox.Sandbox.default().image_tag()
    proc = subprocess.run(["bash", str(sandbox.docker_dir() / "ensure-docker.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "bookworm or trixie, not 'buster'" in proc.stderr
