"""Test runs leave nothing behind: no temporary folders, no server processes.

The session-scoped autouse fixture :func:`nothing_left_behind` gives this pytest process a
temporary directory of its own (``TMPDIR`` and :data:`tempfile.tempdir`, inherited by
every child process), so it sees only what this run made, however many other runs share
``/tmp``. At the end of the session it errors if the run left behind

- an ``op-*`` or ``openplace-*`` folder in that directory, or
- a process started by this run: a descendant of this pytest process, or a server
  daemonised out of the tree (``pg_ctl``'s PostgreSQL) whose command line names the
  directory; the processes it finds are stopped.

In a session where tests failed, folders are kept without an error (a failing cluster
keeps its logs on purpose and names the folder in its error); processes never are. The
directory is ``pytest-openplace-<pid>-*``; an empty one whose run was killed is removed
by the next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

FOLDER_PREFIXES = ("op-", "openplace-")
SESSION_PREFIX = "pytest-openplace-"  # then the pid of the run
GRACE_SECONDS = 10.0  # processes stopped just before the end may still be exiting


def _started_by_this_run(session_dir: Path) -> dict[int, str]:
    """Live processes of this run: descendants of this process, and processes naming
    ``session_dir`` on their command line (with their descendants)."""
    me = psutil.Process()
    roots: list[psutil.Process] = list(me.children(recursive=True))
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.pid != me.pid and any(str(session_dir) in arg for arg in cmdline):
            roots.append(proc)
            with contextlib.suppress(psutil.Error):
                roots.extend(proc.children(recursive=True))
    found: dict[int, str] = {}
    for proc in roots:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = " ".join(proc.cmdline())[:200] or proc.name()
        except psutil.Error:
            pass
    return found


def _stop(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def _remove_empty_dirs_of_dead_runs() -> None:
    """A run killed before its end cannot remove its directory: the next run does, if
    it is empty (a non-empty one holds logs of failed tests)."""
    for path in Path(tempfile.gettempdir()).glob(f"{SESSION_PREFIX}*-*"):
        pid = path.name.removeprefix(SESSION_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            with contextlib.suppress(OSError):
                path.rmdir()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """This run's temporary directory; errors at the end if the run left anything in it."""
    tmp_path_factory.getbasetemp()  # pytest's own tmp_path root stays where it is
    _remove_empty_dirs_of_dead_runs()
    session_dir = Path(tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}{os.getpid()}-"))
    session_dir.chmod(0o1777)  # like /tmp: servers running as another user use it too
    before = set(_started_by_this_run(session_dir))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(session_dir)
    try:
        yield session_dir
    finally:
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        tempfile.tempdir = saved_tempdir

    deadline = time.monotonic() + GRACE_SECONDS
    while True:
        procs = {p: c for p, c in _started_by_this_run(session_dir).items() if p not in before}
        if not procs or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    _stop(list(procs))
    folders = sorted(p.name for p in session_dir.iterdir() if p.name.startswith(FOLDER_PREFIXES))
    failed = request.session.testsfailed > 0
    if failed and folders:
        print(f"\nleftovers: kept for the failed tests in {session_dir}: {', '.join(folders)}")
    else:
        shutil.rmtree(session_dir, ignore_errors=True)
    problems = [f"process {pid} still running (now stopped): {cmd}" for pid, cmd in procs.items()]
    if not failed:
        problems += [f"temporary folder left behind (now removed): {name}" for name in folders]
    if problems:
        pytest.fail("the test run left things behind:\n  " + "\n  ".join(problems), pytrace=False)
