"""The committed protobuf modules are exactly what hospitalnet.proto compiles to (no drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hospitalnet.transport.proto import hospitalnet_pb2 as pb
from hospitalnet.transport.proto import hospitalnet_pb2_grpc as pb_grpc

protoc = pytest.importorskip("grpc_tools.protoc")  # the test extra; the runtime never needs it
descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")

ROOT = Path(__file__).resolve().parents[2]
PROTO = "hospitalnet/transport/proto/hospitalnet.proto"
GENERATED = ("hospitalnet_pb2.py", "hospitalnet_pb2_grpc.py", "hospitalnet_pb2.pyi")


def _compile(out: Path) -> None:
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--descriptor_set_out={out / 'set.pb'}",
        str(ROOT / PROTO),
    ]
    assert protoc.main(args) == 0


@pytest.mark.timeout(60)
def test_committed_descriptor_matches_the_proto_file(tmp_path):
    _compile(tmp_path)
    fresh = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "set.pb").read_bytes())
    assert len(fresh.file) == 1
    for message in fresh.file[0].message_type:  # protoc adds json names the gencode leaves out
        for f in message.field:
            f.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert fresh.file[0] == committed


def _installed_tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


@pytest.mark.timeout(60)
def test_regenerating_gives_identical_files(tmp_path):
    made_with = pb_grpc.GRPC_GENERATED_VERSION
    if _installed_tools_version() != made_with:
        pytest.skip(f"committed files come from grpcio-tools {made_with}; descriptors still match")
    _compile(tmp_path)
    folder = ROOT / Path(PROTO).parent
    for name in GENERATED:
        fresh = (tmp_path / Path(PROTO).parent / name).read_text()
        assert fresh == (folder / name).read_text(), f"{name} drifted: run scripts/gen_proto.sh"


def test_service_paths_used_by_the_transport_exist_in_the_proto():
    from hospitalnet.transport.grpc import SERVICE

    service = pb.DESCRIPTOR.services_by_name["Exchange"]
    assert SERVICE == service.full_name == "hospitalnet.v1.Exchange"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {"Deliver": (True, False), "Heartbeat": (False, False)}
    assert re.search(r"'/hospitalnet\.v1\.Exchange/Deliver'", Path(pb_grpc.__file__).read_text())


@pytest.mark.timeout(60)
def test_the_runtime_works_without_grpc_tools():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['grpc_tools'] = None  # as if grpcio-tools were not installed\n"
        "import hospitalnet.transport.grpc as t, hospitalnet.pki, hospitalnet.checkpoint\n"
        "import hospitalnet.cli.pki\n"
        "env = t.pb.Envelope(sender='n1', payload=b'x')\n"
        "assert t.pb.Envelope.FromString(env.SerializeToString()) == env\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
