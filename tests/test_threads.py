"""Thread settings of the processes hospitalnet runs (the figures behind them:
benchmarks/contention.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hospitalnet.threads import child_environment, configure_openmp, thread_budget, usable_cores

REPO = Path(__file__).resolve().parents[1]


def test_passive_wait_policy_unless_the_user_chose_one():
    env: dict[str, str] = {}
    configure_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    configure_openmp(chosen)
    assert chosen == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_thread_budget_shares_the_cores_between_processes():
    assert thread_budget(9, cores=2) == 1  # eight sites and a server on a small machine
    assert thread_budget(9, cores=32) == 3
    assert thread_budget(1, cores=4) == 4
    assert thread_budget(0, cores=4) == 4
    assert 1 <= thread_budget(1) == usable_cores() <= (os.cpu_count() or 1)


def test_child_environment_sets_threads_and_policy_and_keeps_the_rest():
    env = child_environment(2, {"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert env == {
        "PATH": "/bin",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def test_python_m_hospitalnet_sets_the_policy_before_torch_is_imported(tmp_path):
    # An import hook records the policy at the moment torch is first imported (OpenMP reads it
    # then); `site run` imports torch first thing, then stops on the missing manifest.
    code = (
        "import os, runpy, sys\n"
        "seen = []\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and not seen:\n"
        "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "sys.meta_path.insert(0, Hook())\n"
        "sys.argv = ['hospitalnet', 'site', 'run', 'missing.yaml']\n"
        "try:\n"
        "    runpy.run_module('hospitalnet', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(seen)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip().splitlines()[-1] == "['PASSIVE']", out.stderr[-2000:]
