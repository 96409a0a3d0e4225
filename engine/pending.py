"""The latest decisions per user and placement, kept in the user's hash until their rewards are in.

One field ``pd:{placement}`` holds the last ``KEEP`` decisions of that placement that showed an action, and
the last that showed "none" (a decision of the lift's groups, kept so a reward after it counts there), newest
first, so a reward arriving days later is learned with its context. Keeping more than the latest one matters:
a conversion often arrives after the user's next page view has replaced the decision it belongs to.

Wire forms (all are read; a field is written in the first that can hold it):

- text: the compact entries joined by ``|``. A compact entry, about 50 bytes, is::

      <blob>,<flags>,<action>

  blob: base64 (unpadded) of the decision id (12 bytes), ts (float64), a 3-byte head, the probability
  in millionths (uint32, only when it is not 1), the non-zero values of the context's history block
  (float16) and the policy version (1, 2, 4 or 8 bytes, as the head says). The rest of the context is
  in the head: 0/1 flags (bias, device and segment one-hots, weekend) and which history values are
  non-zero; the hour's sin and cos are recomputed from ts, as features/context.py computes them.
  flags: a letter for the mode, then one per reward type credited, in order. ``,<action>`` is left
  out when the action is the one of the entry before (a kept decision often repeats it).
- JSON: a list of compact entries and list-form entries, for a field with an entry that is not compact
  or an action with ``|`` in it. The list form, written before the compact one (and still for a
  decision it cannot hold: an id that is not 24 lowercase hex digits, a context of another layout)::

      [decision_id, action, p, ts, version, credited, x as base64 of float16, mode]

Every form keeps the context in float16: the decoded ``x`` is the same vector, bit for bit. Measured with
load_tests/memory_per_user.py (150k events, 19,279 users): ``pd:*`` 782 -> 339 bytes per user.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

from features.state import UserState
from policy.catalogue import NO_ACTION

PENDING_PREFIX = "pd:"
KEEP = 3  # decisions that showed an action kept per placement (and one "none"): ~50 bytes each

# Wire constants of the compact form: never change a letter or a position, only add.
_MODE_LETTER = {"exploit": "x", "sticky": "s", "holdout": "h", "explore": "e", "pinned": "p",
                "fallback": "f", "suppressed": "u"}
_REWARD_LETTER = {"click": "C", "conversion": "V"}
_MODE_OF = {v: k for k, v in _MODE_LETTER.items()}
_REWARD_OF = {v: k for k, v in _REWARD_LETTER.items()}
# The context's layout: positions 0-7 hold 0 or 1 (bias, device and segment one-hots), 8 and 9 the hour's
# sin and cos, 10 the weekend flag, 11 on the history block. A vector that does not fit (other values
# where flags are, another hour) is written in the list form.
_FLAG_END, _HOUR_AT, _WEEKEND_AT, _VALUES_AT = 8, 8, 10, 11
_HOUR_BYTES_AT, _WEEKEND_BYTES_AT, _VALUES_BYTES_AT = 2 * _HOUR_AT, 2 * _WEEKEND_AT, 2 * _VALUES_AT
# The head: bits 0-7 the flags, 8 the weekend, 9 "a probability follows", 10-11 the version's size, then
# one bit per history value (set: stored, clear: zero) and an end bit that tells how many there are.
_WEEKEND_BIT, _P_BIT = 1 << 8, 1 << 9
_VERSION_SHIFT = 10
_VERSION_CODES = "BHIQ"
_MASK_SHIFT = 12
_MAX_VALUES = 24 - _MASK_SHIFT - 1
_FIXED = "<12sd3s"  # id, ts, head: the id is the blob's first 16 characters, ts within the next 12
_ID_CHARS = 16
_unpack_ts = struct.Struct("<d").unpack_from
_a2b = binascii.a2b_base64
_HOUR = struct.Struct("<ee")
_ONE, _ZERO = b"\x00\x3c", b"\x00\x00"  # float16 1.0 and 0.0, little-endian
_F16, _F64 = np.dtype(np.float16), np.dtype(np.float64)  # positional dtypes: numpy parses keywords slowly
_DAY_S = 86400.0
_TWO_PI = 2 * math.pi  # the hour angle is _TWO_PI * (ts % _DAY_S) / _DAY_S, as features/context.py has it
_sin, _cos = math.sin, math.cos
_PAD = ("", "", "==", "=")  # base64 padding by length % 4
_SEP = "|"
# a compact text field holds a "none" decision when its action is written: before the next entry or at the end
_NONE_LAST, _NONE_END = f",{NO_ACTION}{_SEP}", f",{NO_ACTION}"

_FLAGS_OF = {b"".join(_ONE if b >> i & 1 else _ZERO for i in range(_FLAG_END)): b for b in range(1 << _FLAG_END)}
_WEEKEND_OF = {_ZERO: 0, _ONE: _WEEKEND_BIT}


def _layout(mask: int, n: int) -> str:
    """struct layout of a history block of ``n`` float16 values, the non-zero ones set in ``mask``."""
    return "".join("H" if mask >> i & 1 else "2x" for i in range(n))


_NON_ZERO = bytes([0] + [1] * 255)  # bytes.translate table: each byte -> whether it is non-zero
# By a history block's non-zero bytes (the block translated by _NON_ZERO): the head bits of its value
# mask (and end bit) in the head's low 16 bits and in its third byte, the struct that reads its non-zero
# values, and the structs that write a blob, by version size (then with a probability, ``4 + size``).
_PATTERNS: dict[bytes, tuple[int, int, struct.Struct, list[struct.Struct]]] = {}


def _pattern(nonzero: bytes) -> tuple[int, int, struct.Struct, list[struct.Struct]]:
    """A block's packing, cached (a few hundred patterns occur)."""
    n = len(nonzero) // 2
    mask = sum(1 << i for i in range(n) if nonzero[2 * i] or nonzero[2 * i + 1])
    # the 3-byte head is written as "HB" (same bytes as its int.to_bytes(3, "little"), without making them)
    blobs = [struct.Struct(f"<12sdHB{'I' if has_p else ''}{mask.bit_count()}H{version}")
             for has_p in (False, True) for version in _VERSION_CODES]
    mask_bits = (mask | 1 << n) << _MASK_SHIFT
    found = (mask_bits & 0xFFFF, mask_bits >> 16, struct.Struct("<" + _layout(mask, n)), blobs)
    if len(_PATTERNS) >= 1 << 16:
        _PATTERNS.clear()
    _PATTERNS[nonzero] = found
    return found


# By head: (the blob's struct, the float16 context's struct: flags, sin, cos, weekend and the history
# block with the values in place, the flag bytes, the weekend bytes, whether a probability is stored).
_HEADS: dict[bytes, tuple[struct.Struct, struct.Struct, bytes, bytes, bool]] = {}


def _head(raw: bytes) -> tuple[struct.Struct, struct.Struct, bytes, bytes, bool]:
    """What a head says, cached (a few hundred distinct heads occur)."""
    found = _HEADS.get(raw)
    if found is None:
        head = int.from_bytes(raw, "little")
        marked = head >> _MASK_SHIFT
        n = marked.bit_length() - 1
        if n < 0:
            raise ValueError(f"pending decision head {raw!r} has no end bit")
        mask = marked ^ 1 << n
        has_p = bool(head & _P_BIT)
        version = _VERSION_CODES[head >> _VERSION_SHIFT & 3]
        found = (struct.Struct(f"{_FIXED}{'I' if has_p else ''}{mask.bit_count()}H{version}"),
                 struct.Struct(f"<{2 * _FLAG_END}see2s{_layout(mask, n)}"),
                 b"".join(_ONE if head >> i & 1 else _ZERO for i in range(_FLAG_END)),
                 _ONE if head & _WEEKEND_BIT else _ZERO,
                 has_p)
        if len(_HEADS) >= 1 << 16:
            _HEADS.clear()
        _HEADS[raw] = found
    return found


def _blob(p: PendingDecision) -> bytes | None:
    """The compact form's bytes of ``p`` (None when a value does not fit them)."""
    ident, version, x = p.decision_id, p.policy_version, p.x
    if len(ident) != 24 or type(version) is not int or not 0 <= version < 1 << 64 or x.ndim != 1:
        return None
    try:
        raw_id = bytes.fromhex(ident)
    except ValueError:
        return None
    x16 = p.x16
    if x16 is None:
        x16 = x.astype(_F16).tobytes()
    flags = _FLAGS_OF.get(x16[:_HOUR_BYTES_AT])
    weekend = _WEEKEND_OF.get(x16[_WEEKEND_BYTES_AT:_VALUES_BYTES_AT])
    block = x16[_VALUES_BYTES_AT:]
    if flags is None or weekend is None or len(block) > 2 * _MAX_VALUES or raw_id.hex() != ident:
        return None
    ts = p.ts
    angle = _TWO_PI * (ts % _DAY_S) / _DAY_S
    if x16[_HOUR_BYTES_AT:_WEEKEND_BYTES_AT] != _HOUR.pack(_sin(angle), _cos(angle)):
        return None
    nonzero = block.translate(_NON_ZERO)
    mask_low, mask_high, values, blobs = _PATTERNS.get(nonzero) or _pattern(nonzero)
    size = 0 if version < 1 << 8 else 1 if version < 1 << 16 else 2 if version < 1 << 32 else 3
    q = p.probability
    if q == 1.0:
        return blobs[size].pack(raw_id, ts, flags | weekend | mask_low | size << _VERSION_SHIFT, mask_high,
                                *values.unpack(block), version)
    q = round(q, 6)
    micro = round(q * 1e6) if math.isfinite(q) else -1
    if not (0 <= micro < 1 << 32 and micro / 1e6 == q):
        return None
    return blobs[4 + size].pack(raw_id, ts, _P_BIT | flags | weekend | mask_low | size << _VERSION_SHIFT,
                                mask_high, micro, *values.unpack(block), version)


@dataclass(slots=True)
class PendingDecision:
    decision_id: str
    placement: str
    action: str
    probability: float
    ts: float
    policy_version: int
    x: np.ndarray
    credited: list[str] = field(default_factory=list)  # reward types already credited
    mode: str = "exploit"  # the decision's mode: rewards of holdout decisions measure the control group
    # x in float16 (its bytes), when the one who made this has them at hand: the compact form is written from
    # them instead of converting x again (a batch's contexts are converted at once, a stored entry has them)
    x16: bytes | None = field(default=None, repr=False, compare=False)

    def to_wire(self) -> list:
        """The list form (read, and written when a value does not fit the compact form)."""
        x64 = base64.b64encode(self.x.astype(np.float16).tobytes()).decode("ascii")
        return [self.decision_id, self.action, round(self.probability, 6), self.ts, self.policy_version,
                self.credited, x64, self.mode]

    def to_compact(self) -> str | None:
        """The compact form without its action, ``<blob>,<flags>`` (None when a value does not fit it)."""
        flags = _MODE_LETTER.get(self.mode)
        if flags is None:
            return None
        for reward in self.credited:
            letter = _REWARD_LETTER.get(reward)
            if letter is None:
                return None
            flags += letter
        raw = _blob(self)
        if raw is None:
            return None
        return f"{binascii.b2a_base64(raw, newline=False).decode('ascii').rstrip('=')},{flags}"

    @classmethod
    def from_wire(cls, placement: str, doc: list) -> PendingDecision:
        decision_id, action, p, ts, version, credited, x64, mode = doc
        x = np.frombuffer(binascii.a2b_base64(x64), _F16).astype(_F64)
        return cls(decision_id, placement, action, p, ts, version, x, list(credited), mode)

    @property
    def field(self) -> str:
        return PENDING_PREFIX + self.placement


def _docs(raw: str) -> list:
    """A field's entries as stored: compact ones as strings, list-form ones as lists."""
    return orjson.loads(raw) if raw[:1] == "[" else raw.split(_SEP)


def _field(docs: list) -> str:
    if all(isinstance(doc, str) and _SEP not in doc for doc in docs):
        return _SEP.join(docs)
    return orjson.dumps(docs).decode()


def _decode_slot(placement: str, raw: str) -> list[PendingDecision]:
    """The decisions of one ``pd:`` field, newest first."""
    out: list[PendingDecision] = []
    action = None
    a2b, frombuffer = binascii.a2b_base64, np.frombuffer
    for doc in _docs(raw):
        if not isinstance(doc, str):
            out.append(PendingDecision.from_wire(placement, doc))
            action = doc[1]
            continue
        parts = doc.split(",", 2)
        if len(parts) == 3:
            blob, flags, action = parts
        elif len(parts) != 2 or action is None:
            raise ValueError(f"pending decision {doc!r} is not a compact entry (or has no action)")
        else:
            blob, flags = parts
        b = a2b(blob + _PAD[len(blob) & 3])
        blob_struct, context, flag_bytes, weekend, has_p = _HEADS.get(b[20:23]) or _head(b[20:23])
        fields = blob_struct.unpack(b)
        ts = fields[1]
        angle = _TWO_PI * (ts % _DAY_S) / _DAY_S
        x16 = context.pack(flag_bytes, _sin(angle), _cos(angle), weekend, *fields[4 if has_p else 3 : -1])
        out.append(PendingDecision(
            fields[0].hex(), placement, action, fields[3] / 1e6 if has_p else 1.0, ts, fields[-1],
            frombuffer(x16, _F16).astype(_F64),
            [_REWARD_OF[c] for c in flags[1:]] if len(flags) > 1 else [], _MODE_OF[flags[0]], x16))
    return out


def pending_decisions(state: UserState) -> list[PendingDecision]:
    """Every pending decision of the user, newest first within each placement."""
    out: list[PendingDecision] = []
    for name, raw in state.fields.items():
        if name.startswith(PENDING_PREFIX):
            out += _decode_slot(name[len(PENDING_PREFIX) :], raw)
    return out


def _ts_of(doc: str) -> float:
    """The ts of a compact entry, read from its blob's characters 16-27 (bytes 12-20)."""
    return _unpack_ts(_a2b(doc[_ID_CHARS : _ID_CHARS + 12]))[0]


def _id_chars(decision_id: str) -> str | None:
    """The 16 characters a compact entry starts with for this id (None: an id the form cannot hold)."""
    try:
        raw = bytes.fromhex(decision_id)
    except ValueError:
        return None
    if len(raw) != 12 or raw.hex() != decision_id:
        return None
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _entries(docs: list) -> list[tuple[float, str, str, list | str]]:
    """A field's entries as ``slot_with`` handles them, contexts left encoded: (ts, the id or its 16
    characters, action, the entry as stored but without its action)."""
    out: list[tuple[float, str, str, list | str]] = []
    action = None
    for doc in docs:
        if isinstance(doc, str):
            parts = doc.split(",", 2)
            if len(parts) == 3:
                action = parts[2]
                doc = doc[: len(doc) - len(action) - 1]
            elif action is None:
                raise ValueError(f"pending decision {doc!r} has no action and no entry before it")
            out.append((_ts_of(doc), doc[:_ID_CHARS], action, doc))
        else:
            action = doc[1]
            out.append((doc[3], doc[0], action, doc))
    return out


def slot_with(state: UserState | None, pending: PendingDecision) -> str:
    """The placement's field value with ``pending`` added (new) or replaced (same decision id): the newest
    ``KEEP`` decisions that showed an action and the newest that showed "none" (``_newest``), newest first (a
    field is always written sorted; ``pending`` goes before the kept ones of the same ts).

    The other decisions of the placement stay as stored (no context decoded and encoded again); an entry
    whose action is the one of the entry before it is written without it.
    """
    text = pending.to_compact()
    raw = state.fields.get(pending.field) if state is not None else None
    action = pending.action
    if text is not None and _SEP not in action:
        if not raw:
            return f"{text},{action}"
        if raw[0] != "[":  # a text field: compact entries only
            if text[:_ID_CHARS] in raw:
                done = _in_place(raw, text, pending)
            # (both forms hold _NONE_END: one scan of the field rules most of them out)
            elif action == NO_ACTION or _NONE_END in raw and (_NONE_LAST in raw or raw.endswith(_NONE_END)):
                done = None  # "none" decisions leave first: ``_newest`` below
            else:
                done = _first(raw, text, pending)
            if done is not None:
                return done
    entry = ((pending.ts, text[:_ID_CHARS], action, text) if text is not None
             else (pending.ts, pending.decision_id, action, pending.to_wire()))
    # a compact entry is known by its id's 16 characters (one-to-one), a list-form one by the id itself
    token = _id_chars(pending.decision_id)
    others = [e for e in _entries(_docs(raw)) if e[1] != (pending.decision_id if isinstance(e[3], list) else token)
              ] if raw else []
    kept = _newest(sorted([entry, *others], key=lambda e: e[0], reverse=True))
    out: list[list | str] = []
    previous = None
    for _, _, act, doc in kept:
        out.append(doc if isinstance(doc, list) or act == previous else f"{doc},{act}")
        previous = act
    return _field(out)


def _newest(entries: list[tuple[float, str, str, list | str]]) -> list[tuple[float, str, str, list | str]]:
    """The entries to keep of ``entries`` (newest first): the newest ``KEEP`` that showed an action, and the
    newest that showed "none" (kept for the lift's count of rewards only). So a "none" never pushes out an
    action shown before it, whose reward may still come (late rewards too), and an action never pushes out the
    "none" a reward after it counts on."""
    shown = nothing = 0
    kept = []
    for e in entries:
        if e[2] == NO_ACTION:
            nothing += 1
            if nothing <= 1:
                kept.append(e)
        else:
            shown += 1
            if shown <= KEEP:
                kept.append(e)
    return kept


def _first(raw: str, text: str, pending: PendingDecision) -> str | None:
    """A new decision (its id is not in the text field ``raw``) no older than the field's newest: it goes
    first, the oldest drops out (None: not that case)."""
    docs = raw.split(_SEP, KEEP - 1)[: KEEP - 1]
    first = docs[0].split(",", 2)
    if len(first) != 3 or _ts_of(docs[0]) > pending.ts:
        return None
    if first[2] == pending.action:
        docs[0] = f"{first[0]},{first[1]}"
    return _SEP.join([f"{text},{pending.action}", *docs])


def _in_place(raw: str, text: str, pending: PendingDecision) -> str | None:
    """A kept decision written again (a credit), same action and no other entry of its ts before it: it
    keeps its place (None: not that case)."""
    docs = raw.split(_SEP)
    token = text[:_ID_CHARS]
    at, previous, action = -1, None, None
    for i, doc in enumerate(docs):
        parts = doc.split(",", 2)
        action = parts[2] if len(parts) == 3 else previous
        if doc.startswith(token):
            at = i
            break
        previous = action
    if at < 0 or action != pending.action or (at > 0 and _ts_of(docs[at - 1]) <= pending.ts) or (
            at + 1 < len(docs) and _ts_of(docs[at + 1]) > pending.ts):
        return None
    docs[at] = text if previous == action else f"{text},{action}"
    return _SEP.join(docs)
