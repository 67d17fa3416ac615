import re

import numpy as np
import pytest
from fakerun import CANARIES, PATIENT_CODE_BASE

from evaluation.privacy import REDACTED, redact_config, redact_text
from hospitalnet.rundir import RunDir

DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def _outputs(rendered):
    for paths in (rendered.network, rendered.site):
        for path in (paths.html, paths.markdown, paths.metrics_csv, paths.summary_json):
            yield path, DATA_URI.sub("", path.read_text(encoding="utf-8"))


def test_canaries_are_in_the_inputs(rendered):
    rd = RunDir(rendered.root)
    inputs = rd.config.read_text() + rd.data_json.read_text() + rd.run_json.read_text()
    for canary in CANARIES:
        assert canary in inputs


def test_no_canary_reaches_an_output(rendered):
    patients = np.load(RunDir(rendered.root).testsets)["global__patients"]
    assert patients.min() >= PATIENT_CODE_BASE
    codes = {str(c) for c in np.unique(patients)}
    for path, text in _outputs(rendered):
        for canary in CANARIES:
            assert canary not in text, f"{canary} leaked into {path.name}"
        for needle in ("/home/alice", "/srv/", "C:\\Users", str(PATIENT_CODE_BASE)[:6]):
            assert needle not in text, f"{needle} leaked into {path.name}"
        assert not codes & set(re.findall(r"\d{9}", text)), path.name


def test_redacted_config_is_still_shown(rendered):
    html = rendered.network.html.read_text()
    assert "cache_dir: &lt;redacted path&gt;" in html
    assert "root: &lt;redacted path&gt;" in html
    assert "kind: multiplex_ring" in html


@pytest.mark.parametrize(
    "text",
    [
        "/data/nih/images",
        "C:\\Users\\bob\\nih",
        "~/xray",
        "./site3",
        "images/00000001_000.png",
        "data/nih/png",
        "file:///mnt/x",
        "https://example.org/x",
        "--out=/tmp/run",
    ],
)
def test_path_like_text_is_redacted(text):
    assert REDACTED in redact_text(f"before {text} after")
    assert "before" in redact_text(f"before {text} after")


@pytest.mark.parametrize("text", ["PA/AP mix", "cuda:0", "n1->n2", "2.14.1+cpu", "multiplex_ring"])
def test_ordinary_text_is_kept(text):
    assert redact_text(text) == text


def test_location_keys_are_redacted_whatever_their_value():
    out = redact_config("data:\n  root: nih\n  image_size: 64\nsites_dir: here\nnote: ok\n")
    assert "root: <redacted path>" in out and "sites_dir: <redacted path>" in out
    assert "image_size: 64" in out and "note: ok" in out
    assert "not shown" in redact_config("a: [unclosed")
