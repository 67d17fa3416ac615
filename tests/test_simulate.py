"""End to end: `hospitalnet simulate` on a small synthetic world, and seeded determinism."""

import json

import numpy as np
import pytest

from hospitalnet.cli import main
from hospitalnet.config import ExperimentConfig, validate
from hospitalnet.experiment import run_experiment
from hospitalnet.rundir import RunDir, read_arrays

TINY = {
    "methods": ["ecl", "pooled"],
    "world": {"patients": 160, "image_size": 32},
    "data": {"image_size": 16},
    "model": {"width": 4, "groups": 2},
    "training": {"local_steps": 6, "batch_size": 8, "eval_points": 1},
    "network": {"exchange_every": 2},
}


@pytest.fixture
def world_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSPITALNET_WORLD", str(tmp_path / "world"))
    return tmp_path


@pytest.mark.slow
def test_simulate_quick_config_end_to_end(world_env, capsys):
    out = world_env / "run"
    assert (
        main(["simulate", "--config", "configs/quick.yaml", "--out", str(out), "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"report: {(out / 'report.html').resolve()}" in printed
    summary = json.loads((out / "summary.json").read_text())
    for method in ["ecl", "gossip", "fedavg", "local", "pooled"]:
        m = summary["methods"][method]
        for field in [
            "mean_site_macro_auroc",
            "worst_site_macro_auroc",
            "gap_to_pooled",
            "wall_seconds",
        ]:
            assert m[field] is not None and np.isfinite(m[field]), (method, field)
        assert 0.0 <= m["mean_site_macro_auroc"] <= 1.0
    assert summary["methods"]["pooled"]["gap_to_pooled"] == pytest.approx(0.0)
    run = RunDir(out)
    for path in [run.metrics_csv, run.report_md, run.network_json, run.data_json, run.config]:
        assert path.is_file(), path
    network = json.loads(run.network_json.read_text())
    ecl_edges = network["methods"]["ecl"]["edges"]
    assert len(ecl_edges) == 16  # multiplex ring over 8 sites
    assert all(sum(e["bytes"].values()) > 0 for e in ecl_edges)
    # learning curves: every method's last point is its final model, after all local steps
    # (FedAvg's synchronous rounds stretch virtual time; the x axis must count steps)
    for method in ["ecl", "gossip", "fedavg", "local", "pooled"]:
        points = json.loads(run.history(method).read_text())["eval_points"]
        assert points[-1]["local_steps"] == 24, method
        assert [p["local_steps"] for p in points] == sorted(p["local_steps"] for p in points)


def test_same_seed_same_predictions(world_env):
    cfg = validate(ExperimentConfig, TINY, source="test")
    a = run_experiment(cfg, world_env / "a", progress=False)
    b = run_experiment(cfg, world_env / "b", progress=False)
    for method in TINY["methods"]:
        pa, pb = read_arrays(a.predictions(method)), read_arrays(b.predictions(method))
        assert pa.keys() == pb.keys()
        for k in pa:
            assert np.array_equal(pa[k], pb[k]), (method, k)
    other = validate(ExperimentConfig, {**TINY, "seed": 1}, source="test")
    c = run_experiment(other, world_env / "c", progress=False)
    pc = read_arrays(c.predictions("ecl"))
    assert not np.array_equal(
        pc["final__n1__global"][:5], read_arrays(a.predictions("ecl"))["final__n1__global"][:5]
    )


def test_bad_config_is_one_line_error(world_env, capsys):
    bad = world_env / "bad.yaml"
    bad.write_text("training:\n  local_step: 3\n")
    assert main(["simulate", "--config", str(bad), "--out", str(world_env / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and "training.local_step: unknown key" in err
        and "Traceback" not in err
    )
