#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC modules from hospitalnet/transport/proto/hospitalnet.proto.
# Needs grpcio-tools (the test extra); the runtime does not. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  hospitalnet/transport/proto/hospitalnet.proto
