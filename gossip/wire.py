"""memberlist's wire messages as immutable values (``docs/gossip-wire.md`` §2).

Each message is a frozen, slotted dataclass whose fields are snake_case versions of the
Go struct fields. ``FIELDS`` maps every class to its wire table: the Go field name, the
kind of value and whether Go omits it when empty. The codec is the only place that turns
these into bytes.

WARNING: ONLY APPEND TO ``MessageType``. The numeric values are part of the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum


class MessageType(IntEnum):
    """The type byte in front of every memberlist message (memberlist ``net.go``)."""

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK = 11
    HAS_CRC = 12
    ERR = 13
    HAS_LABEL = 244


class Kind(Enum):
    """How a field travels in msgpack."""

    #: non-negative integer with an upper bound (u8/u16/u32 or Go int)
    UINT8 = 255
    UINT16 = 65535
    UINT32 = 2**32 - 1
    INT = 2**63 - 1
    #: Go ``string``: raw msgpack string, UTF-8 inside
    STR = "str"
    #: Go ``[]byte``: raw msgpack string or nil; nil and empty both read as b""
    BYTES = "bytes"
    BOOL = "bool"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    go_name: bytes
    kind: Kind
    omit_empty: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    seq_no: int
    node: str = ""
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    seq_no: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Nack:
    seq_no: int


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    from_: str


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    addr: bytes
    port: int
    meta: bytes = b""
    vsn: bytes = b""


@dataclass(frozen=True, slots=True)
class Dead:
    incarnation: int
    node: str
    from_: str


@dataclass(frozen=True, slots=True)
class Compress:
    algo: int
    buf: bytes


@dataclass(frozen=True, slots=True)
class Err:
    error: str


@dataclass(frozen=True, slots=True)
class PushPullHeader:
    nodes: int
    user_state_len: int
    join: bool


@dataclass(frozen=True, slots=True)
class PushNodeState:
    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: int
    vsn: bytes


@dataclass(frozen=True, slots=True)
class UserMsgHeader:
    user_msg_len: int


@dataclass(frozen=True, slots=True)
class User:
    """A delegate (serf) message: type byte 8 then raw bytes, no msgpack wrapper."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PushPull:
    """A whole push-pull exchange: header, node states and raw user state."""

    join: bool
    states: tuple[PushNodeState, ...]
    user_state: bytes = b""


#: Messages that travel on their own (one type byte + one map).
Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | Err | User


def _f(name: str, go_name: str, kind: Kind, omit_empty: bool = False) -> FieldSpec:
    return FieldSpec(name, go_name.encode(), kind, omit_empty)


_SOURCE = (
    _f("source_addr", "SourceAddr", Kind.BYTES, True),
    _f("source_port", "SourcePort", Kind.UINT16, True),
    _f("source_node", "SourceNode", Kind.STR, True),
)

FIELDS: dict[type, tuple[FieldSpec, ...]] = {
    Ping: (_f("seq_no", "SeqNo", Kind.UINT32), _f("node", "Node", Kind.STR), *_SOURCE),
    IndirectPing: (
        _f("seq_no", "SeqNo", Kind.UINT32), _f("target", "Target", Kind.BYTES),
        _f("port", "Port", Kind.UINT16), _f("node", "Node", Kind.STR),
        _f("nack", "Nack", Kind.BOOL), *_SOURCE,
    ),
    Ack: (_f("seq_no", "SeqNo", Kind.UINT32), _f("payload", "Payload", Kind.BYTES)),
    Nack: (_f("seq_no", "SeqNo", Kind.UINT32),),
    Suspect: (
        _f("incarnation", "Incarnation", Kind.UINT32), _f("node", "Node", Kind.STR),
        _f("from_", "From", Kind.STR),
    ),
    Alive: (
        _f("incarnation", "Incarnation", Kind.UINT32), _f("node", "Node", Kind.STR),
        _f("addr", "Addr", Kind.BYTES), _f("port", "Port", Kind.UINT16),
        _f("meta", "Meta", Kind.BYTES), _f("vsn", "Vsn", Kind.BYTES),
    ),
    Dead: (
        _f("incarnation", "Incarnation", Kind.UINT32), _f("node", "Node", Kind.STR),
        _f("from_", "From", Kind.STR),
    ),
    Compress: (_f("algo", "Algo", Kind.UINT8), _f("buf", "Buf", Kind.BYTES)),
    Err: (_f("error", "Error", Kind.STR),),
    PushPullHeader: (
        _f("nodes", "Nodes", Kind.INT), _f("user_state_len", "UserStateLen", Kind.INT),
        _f("join", "Join", Kind.BOOL),
    ),
    PushNodeState: (
        _f("name", "Name", Kind.STR), _f("addr", "Addr", Kind.BYTES),
        _f("port", "Port", Kind.UINT16), _f("meta", "Meta", Kind.BYTES),
        _f("incarnation", "Incarnation", Kind.UINT32), _f("state", "State", Kind.INT),
        _f("vsn", "Vsn", Kind.BYTES),
    ),
    UserMsgHeader: (_f("user_msg_len", "UserMsgLen", Kind.INT),),
}

#: Which type byte each single message carries.
TYPE_OF: dict[type, MessageType] = {
    Ping: MessageType.PING,
    IndirectPing: MessageType.INDIRECT_PING,
    Ack: MessageType.ACK,
    Nack: MessageType.NACK,
    Suspect: MessageType.SUSPECT,
    Alive: MessageType.ALIVE,
    Dead: MessageType.DEAD,
    Compress: MessageType.COMPRESS,
    Err: MessageType.ERR,
    User: MessageType.USER,
}
CLASS_OF: dict[int, type] = {int(t): cls for cls, t in TYPE_OF.items()}
