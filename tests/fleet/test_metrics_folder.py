"""A ``ticketing worker``'s metrics folder (``ticketing-metrics-*`` in the temporary directory) is
removed however the worker ends: by itself on every exit it sees, by the next worker after a
SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from ticketing_host.metrics_folder import LOCK_FILE, PREFIX, metrics_folder, remove_abandoned

from ..conftest import SECRET_KEY, wait_until
from .conftest import TICKETING, Workers


def wait_ready(worker: subprocess.Popen[bytes]) -> None:
    """Until Dramatiq's worker process says it is ready: every process is started."""
    assert worker.stderr is not None
    while b"Worker process is ready for action" not in (line := worker.stderr.readline()):
        assert line, "the worker exited before it was ready"


def test_a_sigkilled_workers_folder_is_removed_when_the_next_worker_starts(
    workers: Workers,
) -> None:
    first = workers.start()
    wait_ready(first)
    [killed] = workers.metrics_folders()
    workers.kill(first)
    assert workers.metrics_folders() == {killed}  # SIGKILL: nothing got to clean up

    second = workers.start()
    wait_ready(second)

    folders = workers.metrics_folders()
    assert killed not in folders  # removed by the second worker on its way in
    assert len(folders) == 1  # its own
    second.send_signal(signal.SIGTERM)
    assert second.wait(15) == 0
    workers.running.remove(second)
    assert workers.metrics_folders() == set()


def test_a_worker_restarted_in_place_by_sighup_removes_its_former_folder(workers: Workers) -> None:
    """Dramatiq's reload execs the command again, past every clean-up: the new image removes it."""
    worker = workers.start()
    wait_ready(worker)
    [before] = workers.metrics_folders()

    worker.send_signal(signal.SIGHUP)

    [after] = wait_until(lambda: workers.metrics_folders() - {before}, timeout=60)
    assert wait_until(lambda: workers.metrics_folders() == {after}, timeout=10)
    wait_ready(worker)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    workers.running.remove(worker)
    assert workers.metrics_folders() == set()


@pytest.mark.parametrize(
    "number", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"]
)
def test_a_worker_stopped_while_it_checks_its_database_removes_its_folder(
    tmp_path: Path, number: signal.Signals
) -> None:
    with socket.socket() as silent:  # accepts connections, never answers: the check waits
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        worker = subprocess.Popen(
            [TICKETING, "worker", "--database", f"postgresql://nobody@127.0.0.1:{port}/db",
             "--broker", "redis://127.0.0.1:6379/11"],
            env=os.environ | {"TICKETING_SECRET_KEY": SECRET_KEY, "TMPDIR": str(tmp_path)},
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_until(lambda: list(tmp_path.glob(f"{PREFIX}*")), timeout=30)
            time.sleep(0.5)  # into the database check
            assert worker.poll() is None

            worker.send_signal(number)
            code = worker.wait(15)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)

    assert list(tmp_path.glob(f"{PREFIX}*")) == []
    assert code in (128 + number, 1)  # SystemExit from the signal; SIGINT: click's "Aborted!"


def test_only_folders_whose_workers_are_gone_are_removed(tmp_path: Path) -> None:
    abandoned = tmp_path / f"{PREFIX}abandoned"
    abandoned.mkdir()
    (abandoned / LOCK_FILE).touch()  # nobody holds its lock
    (abandoned / "counter_123.db").touch()
    unlocked_kind = tmp_path / f"{PREFIX}without-lock"  # an earlier version's, or being made
    unlocked_kind.mkdir()
    not_a_folder = tmp_path / f"{PREFIX}file"
    not_a_folder.touch()
    other = tmp_path / "something-else"
    other.mkdir()
    (other / LOCK_FILE).touch()

    with metrics_folder(str(tmp_path)) as running:
        assert Path(running, LOCK_FILE).exists()
        assert not abandoned.exists()  # removed on the way in

        (abandoned_again := tmp_path / f"{PREFIX}again").mkdir()
        (abandoned_again / LOCK_FILE).touch()
        assert remove_abandoned(str(tmp_path)) == [str(abandoned_again)]

        assert Path(running).is_dir()  # held by this process
    assert not Path(running).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [unlocked_kind.name, not_a_folder.name, other.name]
    )
