from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_DUAL: _ClassVar[Kind]
    KIND_MODEL: _ClassVar[Kind]
    KIND_HEARTBEAT: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
KIND_DUAL: Kind
KIND_MODEL: Kind
KIND_HEARTBEAT: Kind

class PayloadSchema(_message.Message):
    __slots__ = ("dtype", "numel", "chunk_index", "chunk_count")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUMEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    numel: int
    chunk_index: int
    chunk_count: int
    def __init__(self, dtype: _Optional[str] = ..., numel: _Optional[int] = ..., chunk_index: _Optional[int] = ..., chunk_count: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("protocol_version", "toolkit_version", "sender", "receiver", "kind", "sender_step", "seq", "sender_incarnation", "model_fingerprint", "schema", "payload", "payload_sha256")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOOLKIT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SENDER_STEP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENDER_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    toolkit_version: str
    sender: str
    receiver: str
    kind: Kind
    sender_step: int
    seq: int
    sender_incarnation: int
    model_fingerprint: str
    schema: PayloadSchema
    payload: bytes
    payload_sha256: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., toolkit_version: _Optional[str] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., kind: _Optional[_Union[Kind, str]] = ..., sender_step: _Optional[int] = ..., seq: _Optional[int] = ..., sender_incarnation: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., schema: _Optional[_Union[PayloadSchema, _Mapping]] = ..., payload: _Optional[bytes] = ..., payload_sha256: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
