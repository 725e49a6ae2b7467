"""`--jobs`: refused where worker processes cannot run (before any model loads), sized by
cores, plans and memory, and a function run beside the main process returns or raises there."""

from __future__ import annotations

import os

import pytest

from depthprune.study.config import StudyError, load_study
from depthprune.study.workers import beside, check_jobs, resolve_jobs, usable_cores
from tests.helpers.cli import run
from tests.unit.test_study import write


@pytest.mark.parametrize("over, jobs, world, needle", [
    ({}, 0, 1, "--jobs must be >= 1"),
    ({"device": "cuda"}, 2, 1, "worker processes run on the CPU"),
    ({"device_map": "auto"}, 2, 1, "worker processes run on the CPU"),
    ({}, 2, 4, "under torchrun"),
])
def test_jobs_the_study_cannot_use_are_refused(tmp_path, calib_dir, over, jobs, world, needle):
    study = load_study(write(tmp_path, calib_dir, **over))
    with pytest.raises(StudyError, match=needle):
        check_jobs(jobs, study, world)


def test_automatic_jobs_follow_cores_plans_and_memory(tmp_path, calib_dir):
    study = load_study(write(tmp_path, calib_dir))
    assert resolve_jobs(None, study, 1, 1000, 0) == usable_cores()
    assert resolve_jobs(None, study, 1, 1, 0) == 1  # no more workers than plans
    assert resolve_jobs(None, study, 1, 1000, 1 << 50) == 1  # weights that no memory holds twice
    assert resolve_jobs(None, study, 2, 1000, 0) == 1  # torchrun's processes split the plans
    assert resolve_jobs(3, study, 1, 1000, 1 << 50) == 3  # asked for: as asked, at most one per plan
    cuda = load_study(write(tmp_path, calib_dir, device="cuda"))
    assert resolve_jobs(None, cuda, 1, 1000, 0) == 1 and resolve_jobs(1, cuda, 1, 1000, 0) == 1


def test_cli_jobs_with_a_device_map_is_one_line_exit_2_before_loading(tmp_path, calib_dir):
    path = write(tmp_path, calib_dir, device_map="auto")
    res = run("sweep", path, "--out", tmp_path / "run", "--jobs", "2")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.startswith("error: --jobs 2: worker processes run on the CPU")
    assert "device_map: auto" in res.output
    assert not (tmp_path / "run").exists()


def test_beside_runs_in_another_process_and_its_error_comes_back():
    with beside(os.getpid) as pid:
        assert pid.result() != os.getpid()
    with pytest.raises(ValueError, match="invalid literal"), beside(int, "not a number") as bad:
        bad.result()
