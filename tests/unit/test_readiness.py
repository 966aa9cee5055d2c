"""/readyz for the whole pod, from the state files its workers publish."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qwen_chat.runtime.readiness import PodReadiness, WorkerStates, remove_worker, reset, summarize


@pytest.mark.parametrize(
    ("states", "workers", "expected"),
    [
        ([], 2, PodReadiness("loading", 0, 2)),
        (["ready"], 2, PodReadiness("loading", 1, 2)),
        (["ready", "ready"], 2, PodReadiness("ready", 2, 2)),
        (["ready", "failed"], 2, PodReadiness("failed", 1, 2)),
        (["ready", "draining"], 2, PodReadiness("draining", 1, 2)),
        (["failed", "draining"], 2, PodReadiness("draining", 0, 2)),  # draining wins: the pod is leaving
        (["ready", "ready", "ready"], 2, PodReadiness("ready", 2, 2)),  # a replacement not yet cleaned up
    ],
)
def test_pod_status_from_worker_states(states: list[str], workers: int, expected: PodReadiness) -> None:
    summary = summarize(states, workers)
    assert summary == expected
    assert summary.ready is (expected.status == "ready")
    assert summary.as_dict() == {
        "status": expected.status,
        "workers_ready": expected.workers_ready,
        "workers": 2,
    }


def test_workers_share_readiness_through_files(tmp_path: Path) -> None:
    folder = tmp_path / "workers"
    mine = WorkerStates(folder, workers=2)
    mine.publish("ready")
    assert (folder / str(os.getpid())).read_text() == "ready"
    assert mine.pod().as_dict() == {"status": "loading", "workers_ready": 1, "workers": 2}
    (folder / "12345").write_text("ready")
    (folder / "12346.tmp").write_text("failed")  # half-written by another worker: not read
    assert mine.pod().status == "ready"
    remove_worker(folder, 12345)  # the master saw that worker exit
    assert mine.pod().workers_ready == 1
    reset(folder)
    assert list(folder.iterdir()) == []


def test_without_a_folder_the_local_state_is_the_pod() -> None:
    alone = WorkerStates(None, workers=4)
    assert alone.pod().as_dict() == {"status": "loading", "workers_ready": 0, "workers": 1}
    alone.publish("ready")
    assert alone.pod().ready
