"""The typed messages that cross an edge between two sites.

Only these leave a hospital. A payload is one flat tensor in the parameter order of the model
fingerprint both ends agreed on: for ECL the edge-specific dual ``y_{i|j}``, for gossip / FedAvg
the sender's trainable parameters. Its size is counted per edge by every transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

# Fixed per-message envelope overhead counted on top of the payload in the simulation
# (sender, receiver, kind, counters, fingerprint, digest); the gRPC transport counts real bytes.
ENVELOPE_BYTES = 96


class MessageKind(str, Enum):
    DUAL = "dual"  # ecl: a request [w, lam]; PDMM variants: y_{i|j} = z_{i|j} - 2 A_{i|j} w_i
    # gossip / FedAvg / the PDMM proximity term: the sender's parameters; an ecl reply: d, the
    # sender's parameters minus the requester's
    MODEL = "model"
    HEARTBEAT = "heartbeat"  # liveness only, no payload


@dataclass(frozen=True)
class Message:
    sender: str
    receiver: str
    kind: MessageKind
    step: int  # the sender's local step counter when the message was made
    seq: int  # per (sender, receiver) sequence number, starting at 1
    payload: torch.Tensor | None = None  # 1-D, contiguous, CPU

    @property
    def payload_nbytes(self) -> int:
        return 0 if self.payload is None else self.payload.numel() * self.payload.element_size()

    @property
    def nbytes(self) -> int:
        return ENVELOPE_BYTES + self.payload_nbytes
