"""Files a user or a peer can damage, outside the run directory: output folders that are files,
binary config/manifest/plan files, unreadable certificates, checkpoints and world files. Each is
one line naming the file, exit code 2 on the command line, and nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hospitalnet.checkpoint import load_latest, save_checkpoint
from hospitalnet.cli import main
from hospitalnet.cli.paths import check_output_folder
from hospitalnet.errors import ConfigError, DataError, NetworkError
from hospitalnet.pki import load_certificate
from hospitalnet.world import _ready_settings, read_partition

REPO = Path(__file__).resolve().parents[1]
BINARY = b"\x89\xff\xfe\x00\x01 not text"


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hospitalnet: error: ") and "\n" not in err, err
    return err.removeprefix("hospitalnet: error: ")


# ---------------------------------------------------------------- --out that cannot be a folder


def _commands(tmp: Path, out: str) -> dict[str, list[str]]:
    """Every command with an output folder; each stops at the --out check before its work."""
    (tmp / "ca").mkdir(exist_ok=True)
    return {
        "synth": ["synth", "--out", out, "--patients", "10"],
        "partition": ["partition", "--data", str(tmp), "--out", out],
        "simulate": ["simulate", "--out", out],
        "site run": ["site", "run", str(REPO / "sites" / "n3.yaml"), "--out", out],
        "server run": ["server", "run", "--network", "x", "--pki", "x", "--out", out],
        "pki init": ["pki", "init", "--out", out],
        "pki issue": ["pki", "issue", "n3", "--ca", str(tmp / "ca"), "--out", out],
    }


@pytest.mark.parametrize(
    "command",
    ["synth", "partition", "simulate", "site run", "server run", "pki init", "pki issue"],
)
@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_out_that_is_a_file_is_one_line_and_nothing_is_written(tmp_path, capsys, command, where):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    out = blocker if where == "is a file" else blocker / "run"
    argv = _commands(tmp_path, str(out))[command]
    before = sorted(p.name for p in tmp_path.iterdir())

    assert main(argv) == 2

    expected = (
        "exists and is not a folder" if where == "is a file" else f"{blocker} is not a folder"
    )
    assert _one_line(capsys) == f"--out {out}: {expected}"
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_check_output_folder_accepts_new_and_existing_folders(tmp_path):
    assert check_output_folder(tmp_path) == tmp_path
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_output_folder_refuses_a_read_only_parent(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            check_output_folder(tmp_path / "run")
    finally:
        tmp_path.chmod(0o700)


# ---------------------------------------------------------------- config, manifest, plan files


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--config", "{f}"],
        ["site", "run", "{f}"],
        ["server", "run", "--network", "{f}", "--pki", "x", "--out", "{out}"],
    ],
    ids=["config", "manifest", "plan"],
)
def test_a_binary_yaml_file_is_one_line_naming_it(tmp_path, capsys, argv):
    path = tmp_path / "file.yaml"
    path.write_bytes(BINARY)  # UnicodeDecodeError before

    code = main([a.format(f=path, out=tmp_path / "o") for a in argv])

    assert code == 2
    assert _one_line(capsys) == f"{path}: not a text file (invalid UTF-8); expected YAML"
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- certificates and keys


def test_a_ca_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    ca = tmp_path / "ca"
    ca.write_text("not a folder")  # NotADirectoryError reading ca/ca.pem before

    assert main(["pki", "issue", "n3", "--ca", str(ca), "--out", str(tmp_path / "o")]) == 2

    assert _one_line(capsys) == f"{ca / 'ca.pem'}: cannot read (Not a directory)"


def test_a_certificate_path_that_is_a_folder_is_one_line(tmp_path):
    with pytest.raises(NetworkError, match=r"cannot read \(Is a directory\)"):
        load_certificate(tmp_path)


# ---------------------------------------------------------------- checkpoints


def test_a_checkpoint_record_replaced_by_a_folder_falls_back(tmp_path):
    tensors = {"w": torch.arange(3.0)}
    save_checkpoint(tmp_path, tensors, {"local_step": 1}, model_fingerprint="fp")
    save_checkpoint(tmp_path, tensors, {"local_step": 2}, model_fingerprint="fp")
    record = tmp_path / "ckpt-00000002.json"
    record.unlink()
    record.mkdir()  # IsADirectoryError escaped load_latest before

    assert load_latest(tmp_path, "fp").meta == {"local_step": 1}


# ---------------------------------------------------------------- the world's own files


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not valid JSON"),
        (b'{"sites": {"n1": ', "not valid JSON"),
        (BINARY, "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"sites": [], "pooled": {}, "global_test": {}}', "sites: missing or not an object"),
    ],
)
def test_a_damaged_partition_json_is_one_line(tmp_path, content, message):
    (tmp_path / "partition.json").write_bytes(content)

    with pytest.raises(DataError, match=message) as caught:
        read_partition(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "partition.json"))


def test_a_missing_partition_json_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="run `hospitalnet partition` first"):
        read_partition(tmp_path)


@pytest.mark.parametrize("content", [b"", b"{", BINARY])
def test_a_damaged_ready_marker_means_not_ready(tmp_path, content):
    ready = tmp_path / "READY"
    ready.write_bytes(content)
    assert _ready_settings(ready) is None
    ready.write_text(json.dumps({"patients": 3}))
    assert _ready_settings(ready) == {"patients": 3}
