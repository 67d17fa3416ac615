"""``hospitalnet nvflare job``: the NVFlare job folder (writing it needs no NVFlare)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hospitalnet.cli import main
from hospitalnet.config import dump_config, load_config
from hospitalnet.plan import load_plan

REPO = Path(__file__).resolve().parents[2]
NETWORK = REPO / "sites" / "network.yaml"
QUICK = REPO / "configs" / "quick.yaml"


def test_the_job_has_one_app_per_hospital_and_one_for_the_server(tmp_path, capsys):
    # execute
    assert main(["nvflare", "job", "--network", str(NETWORK), "--out", str(tmp_path / "job"),
                 "--config", str(QUICK), "--method", "fedprox"]) == 0  # fmt: skip

    # assert: the deploy map names every site of the plan by its own name, and the server
    job = tmp_path / "job"
    plan = load_plan(NETWORK)
    meta = json.loads((job / "meta.json").read_text())
    assert meta["deploy_map"] == {"app_server": ["server"], **{f"app_{s}": [s] for s in plan.sites}}
    assert meta["min_clients"] == 8
    server = json.loads((job / "app_server/config/config_fed_server.json").read_text())
    (workflow,) = server["workflows"]
    assert workflow["path"] == "hospitalnet.deploy.nvflare.controller.HospitalnetController"
    assert workflow["args"]["method"] == "fedprox"
    for s in plan.sites:
        conf = job / f"app_{s}" / "config"
        client = json.loads((conf / "config_fed_client.json").read_text())
        (executor,) = client["executors"]
        assert executor["tasks"] == ["hospitalnet_train"]
        args = executor["executor"]["args"]
        assert executor["executor"]["path"].startswith("hospitalnet.deploy.nvflare.")
        assert args["manifest"] == str((REPO / "sites" / f"{s}.yaml").resolve())
        assert args["method"] == "fedprox" and args["out"] == f"hospitalnet/{s}"
        # the same config and plan at every site and the server
        assert (conf / "config.yaml").read_text() == dump_config(load_config(QUICK))
        assert load_plan(conf / "network_plan.json") == plan
    assert (job / "app_server/config/network_plan.json").read_bytes() == (
        job / "app_n1/config/network_plan.json"
    ).read_bytes()
    assert "class_allow_list" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--method", "pooled"], "not a network method"),
    ],
)
def test_a_bad_method_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "job"
    assert main(["nvflare", "job", "--network", str(NETWORK), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not out.exists()  # nothing half-written


def test_an_existing_folder_or_a_manifest_of_another_site_is_refused(tmp_path, capsys):
    (tmp_path / "job").mkdir()
    assert main(["nvflare", "job", "--network", str(NETWORK), "--out", str(tmp_path / "job")]) == 2
    assert "exists" in capsys.readouterr().err
    # a manifest folder where n2.yaml is n1's manifest
    manifests = tmp_path / "sites"
    shutil.copytree(REPO / "sites", manifests)
    (manifests / "n2.yaml").write_text((manifests / "n1.yaml").read_text())
    out = tmp_path / "job2"
    assert main(["nvflare", "job", "--network", str(NETWORK), "--out", str(out),
                 "--manifests", str(manifests)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "n2.yaml" in err and "'n1'" in err and not out.exists()
