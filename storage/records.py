"""Kafka RecordBatch v2 (magic 2), byte for byte.

Layout, big-endian (offsets in bytes from the start of the batch):

    0  baseOffset i64          12 partitionLeaderEpoch i32     21 attributes i16
    8  batchLength i32         16 magic i8 (= 2)               23 lastOffsetDelta i32
                               17 crc u32 (CRC32C of 21..end)  27 baseTimestamp i64
    35 maxTimestamp i64        43 producerId i64               51 producerEpoch i16
    53 baseSequence i32        57 recordCount i32              61 records ...

`batchLength` counts the bytes after itself (the whole batch is batchLength + 12).
Attributes: bits 0-2 compression, bit 3 timestamp type (1 = log append time), bit 4
transactional, bit 5 control batch. Each record is
`length varint, attributes i8, timestampDelta varint, offsetDelta varint,
key (varint length, -1 = null), value (same), header count varint, headers`.

The CRC starts at `attributes`: baseOffset and partitionLeaderEpoch lie outside it,
which is exactly what lets a leader assign offsets and stamp its epoch by patching
the header of an opaque batch, without decoding records or recomputing the CRC.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol

import attrs
from crc32c import crc32c

from storage import compression as batch_codecs
from storage.record_encoding import ATTRIBUTES_AND_DELTA, NO_HEADERS, NULL_FIELD, encode_record
from storage.varint import NON_NEGATIVE_VARINTS as _VARINTS
from storage.varint import VarintError, decode_varint

MAGIC_V2 = 2
BATCH_HEADER_BYTES = 61
LOG_OVERHEAD_BYTES = 12  # baseOffset + batchLength
CRC_START = 21
# The smallest legal batchLength: a header with no records.
MIN_BATCH_LENGTH = BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES
NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_PARTITION_LEADER_EPOCH = -1
# A compressed batch may not expand past this: a small batch must not exhaust memory.
DECOMPRESSED_BYTES_MAX = 256 * 1024 * 1024

_HEADER = struct.Struct(">qiibIhiqqqhii")
_AFTER_CRC = struct.Struct(">hiqqqhii")  # attributes .. recordCount
_PREFIX = struct.Struct(">qiib")  # baseOffset, batchLength, partitionLeaderEpoch, magic
_OFFSET = struct.Struct(">q")
_EPOCH = struct.Struct(">i")
_CRC = struct.Struct(">I")
_CONTROL_KEY = struct.Struct(">hh")

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_BIT = 0x08
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20

Buffer = bytes | bytearray | memoryview


class Compression(enum.IntEnum):
    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4


class ControlRecordType(enum.IntEnum):
    ABORT = 0
    COMMIT = 1
    LEADER_CHANGE = 2
    SNAPSHOT_HEADER = 3
    SNAPSHOT_FOOTER = 4
    KRAFT_VERSION = 5
    KRAFT_VOTERS = 6


class RecordBatchError(ValueError):
    """Base of every refusal of a batch; the message says what and where."""


class CorruptRecordError(RecordBatchError):
    """CRC mismatch, or a records section that does not parse."""


class InvalidRecordError(RecordBatchError):
    """Impossible size fields, wrong magic, a truncated buffer."""


class UnsupportedCompressionError(RecordBatchError):
    """A codec this build cannot decode (snappy, lz4, zstd) or an unknown codec id."""


class BatchHeader(NamedTuple):
    """The 61-byte header, fields in wire order, built straight from one unpack.

    A NamedTuple rather than an attrs class: every append, read and recovery step
    makes one per batch, and tuple construction costs a fifth as much.
    """

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    def rebased(self, base_offset: int, partition_leader_epoch: int) -> BatchHeader:
        """This header as the leader patches it: offsets and epoch, nothing else."""
        return _new_header((base_offset, self[1], partition_leader_epoch, *self[3:]))

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def size_bytes(self) -> int:
        return self.batch_length + LOG_OVERHEAD_BYTES

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def timestamp_type(self) -> int:
        return 1 if self.attributes & TIMESTAMP_TYPE_BIT else 0

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_BIT)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_BIT)

    @property
    def last_sequence(self) -> int:
        if self.base_sequence < 0:
            return NO_SEQUENCE
        # Sequences wrap at 2**31 like Kafka's DefaultRecordBatch.incrementSequence.
        return (self.base_sequence + self.last_offset_delta) % (1 << 31)


def _new_header(fields: tuple[int, ...]) -> BatchHeader:
    # Skips NamedTuple's keyword-handling __new__: the fields come from one unpack.
    return tuple.__new__(BatchHeader, fields)


@attrs.frozen(kw_only=True, slots=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


@attrs.frozen(kw_only=True, slots=True)
class RecordInput:
    """A record to encode: offsets are assigned by position in the batch."""

    timestamp: int = 0
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class _RecordLike(Protocol):
    @property
    def timestamp(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


# ---------------------------------------------------------------------- headers


def read_header(buffer: Buffer, position: int = 0) -> BatchHeader:
    """Decode and sanity-check a header: size fields and magic, not the CRC."""
    available = len(buffer) - position
    if available < BATCH_HEADER_BYTES:
        raise InvalidRecordError(
            f"batch header at position {position} needs {BATCH_HEADER_BYTES} bytes, "
            f"{available} available"
        )
    header = _new_header(_HEADER.unpack_from(buffer, position))
    if header.batch_length < MIN_BATCH_LENGTH:
        raise InvalidRecordError(
            f"batch at position {position}: batchLength {header.batch_length} "
            f"is below the minimum {MIN_BATCH_LENGTH}"
        )
    if header.magic != MAGIC_V2:
        raise InvalidRecordError(
            f"batch at position {position}: magic {header.magic}, only {MAGIC_V2} is supported"
        )
    return header


def compute_crc(buffer: Buffer, position: int = 0) -> int:
    """CRC32C of attributes..end for the batch at `position`."""
    view = memoryview(buffer)
    (batch_length,) = _EPOCH.unpack_from(view, position + 8)
    end = position + batch_length + LOG_OVERHEAD_BYTES
    return crc32c(view[position + CRC_START : end])


def validate_batch(buffer: Buffer, position: int = 0) -> BatchHeader:
    """read_header + the whole batch present + CRC32C + count sanity."""
    header = read_header(buffer, position)
    available = len(buffer) - position
    if header.size_bytes > available:
        raise InvalidRecordError(
            f"batch at position {position} is {header.size_bytes} bytes, only {available} available"
        )
    actual = crc32c(memoryview(buffer)[position + CRC_START : position + header.size_bytes])
    if actual != header.crc:
        raise CorruptRecordError(
            f"batch at position {position} (base offset {header.base_offset}): "
            f"CRC32C {actual:#010x} does not match the stored {header.crc:#010x}"
        )
    if header.record_count < 0 or header.last_offset_delta < 0:
        raise InvalidRecordError(
            f"batch at position {position}: negative recordCount {header.record_count} "
            f"or lastOffsetDelta {header.last_offset_delta}"
        )
    if header.last_offset_delta < header.record_count - 1:
        raise InvalidRecordError(
            f"batch at position {position}: {header.record_count} records cannot fit "
            f"in lastOffsetDelta {header.last_offset_delta}"
        )
    return header


def iter_batches(buffer: Buffer, *, validate: bool = True) -> Iterator[tuple[int, BatchHeader]]:
    """(position, header) of each batch in a buffer of whole batches, by headers only."""
    position = 0
    end = len(buffer)
    check = validate_batch if validate else read_header
    while position < end:
        header = check(buffer, position)
        if position + header.size_bytes > end:
            raise InvalidRecordError(
                f"partial batch at position {position}: {end - position} bytes remain of "
                f"{header.size_bytes}"
            )
        yield position, header
        position += header.size_bytes


def patch_base_offset(buffer: bytearray, position: int, base_offset: int) -> None:
    _OFFSET.pack_into(buffer, position, base_offset)


def patch_partition_leader_epoch(buffer: bytearray, position: int, epoch: int) -> None:
    _EPOCH.pack_into(buffer, position + 12, epoch)


# ---------------------------------------------------------------------- records


def iter_records(batch: Buffer, position: int = 0) -> Iterator[Record]:
    """Decode the records of the batch at `position`, lazily (a compressed batch's
    records are inflated first, within DECOMPRESSED_BYTES_MAX)."""
    header = read_header(batch, position)
    end = position + header.size_bytes
    if end > len(batch):
        raise InvalidRecordError(f"batch at position {position} is truncated")
    section: Buffer = memoryview(batch)[position + BATCH_HEADER_BYTES : end]
    if header.compression != Compression.NONE:
        section = _inflate(header.compression, section, DECOMPRESSED_BYTES_MAX)
    return _decode_records(header, section)


# The smallest v2 record: length, attributes, timestamp delta, offset delta, key and
# value lengths and header count, one byte each.
MIN_RECORD_BYTES = 7


class ControlBatchError(InvalidRecordError):
    """A control batch from a producer: only the broker writes transaction markers."""


def check_producer_batch(
    batch: Buffer, position: int, header: BatchHeader, *, inflated_bytes_max: int
) -> None:
    """Kafka's LogValidator for what a producer sent, once its CRC has been checked.

    The header must describe its records: a record count and a last offset delta
    that agree (the offsets of a producer's batch run on without gaps), and no more
    records than its bytes can hold. A compressed batch is inflated (at most
    `inflated_bytes_max`) and every record decoded, since it is inflated to be read
    anyway; an uncompressed one is taken by its header (its records are checked by
    the reader, which names the partition and offset of a bad one).
    """
    if header.is_control:
        raise ControlBatchError("control batches are written by the broker, not by producers")
    count = header.record_count
    if count < 1 or header.last_offset_delta != count - 1:
        raise InvalidRecordError(
            f"batch declares {count} records but a last offset delta of {header.last_offset_delta}"
        )
    codec = header.compression
    if codec == Compression.NONE:
        room = (header.size_bytes - BATCH_HEADER_BYTES) // MIN_RECORD_BYTES
        if count > room:
            raise InvalidRecordError(f"batch declares {count} records in {header.size_bytes} bytes")
        return
    end = position + header.size_bytes
    section = memoryview(batch)[position + BATCH_HEADER_BYTES : end]
    inflated = _inflate(codec, section, inflated_bytes_max)
    for expected, record in enumerate(_decode_records(header, inflated)):
        if record.offset != header.base_offset + expected:
            raise InvalidRecordError(
                f"record {expected} of the batch has offset delta "
                f"{record.offset - header.base_offset}"
            )


def check_producer_batches(batches: Buffer, *, inflated_bytes_max: int) -> None:
    """`check_producer_batch` for every batch of a producer's request (CRCs checked)."""
    for position, header in iter_batches(batches, validate=True):
        check_producer_batch(batches, position, header, inflated_bytes_max=inflated_bytes_max)


def _codec_message(codec: int) -> str:
    try:
        name = Compression(codec).name.lower()
    except ValueError:
        return f"unknown compression codec id {codec}"
    return f"compression codec {name} is not supported"


def _inflate(codec: int, section: Buffer, limit: int) -> bytes:
    if codec not in batch_codecs.CODECS:
        raise UnsupportedCompressionError(_codec_message(codec))
    try:
        return batch_codecs.decompress(codec, section, limit)
    except batch_codecs.CompressionError as error:
        raise CorruptRecordError(f"{Compression(codec).name.lower()}: {error}") from None


def _decode_records(header: BatchHeader, section: Buffer) -> Iterator[Record]:
    position = 0
    end = len(section)
    try:
        for _ in range(header.record_count):
            length, position = decode_varint(section, position)
            record_end = position + length
            if length < 0 or record_end > end:
                raise CorruptRecordError(f"record length {length} runs past the batch")
            position += 1  # record attributes: unused in v2
            timestamp_delta, position = decode_varint(section, position)
            offset_delta, position = decode_varint(section, position)
            key, position = _read_bytes(section, position, record_end)
            value, position = _read_bytes(section, position, record_end)
            header_count, position = decode_varint(section, position)
            if header_count < 0:
                raise CorruptRecordError(f"negative header count {header_count}")
            headers = []
            for _ in range(header_count):
                name, position = _read_bytes(section, position, record_end)
                if name is None:
                    raise CorruptRecordError("a record header has a null key")
                header_value, position = _read_bytes(section, position, record_end)
                headers.append((bytes(name).decode("utf-8"), header_value))
            if position != record_end:
                raise CorruptRecordError(
                    f"record declares {length} bytes but its fields take {length + position - record_end}"
                )
            yield Record(
                offset=header.base_offset + offset_delta,
                timestamp=header.base_timestamp + timestamp_delta,
                key=key,
                value=value,
                headers=tuple(headers),
            )
    except (VarintError, UnicodeDecodeError) as error:
        raise CorruptRecordError(
            f"malformed record in batch {header.base_offset}: {error}"
        ) from None
    if position != end:
        raise CorruptRecordError(
            f"batch {header.base_offset} declares {header.record_count} records but "
            f"{end - position} bytes follow them"
        )


def _read_bytes(section: Buffer, position: int, limit: int) -> tuple[bytes | None, int]:
    length, position = decode_varint(section, position)
    if length < 0:
        return None, position
    if position + length > limit:
        raise CorruptRecordError(f"field of {length} bytes runs past its record")
    return bytes(section[position : position + length]), position + length


# ---------------------------------------------------------------------- building


NO_TIMESTAMP = -1


class BatchBuilder:
    """Encodes records one by one into one growing bytearray; `build()` adds the header.

    A record's fields are joined in one step and appended behind its length: table
    look-ups for every varint of an ordinary record (timestamp delta, offset delta,
    lengths), the empty header list as a constant, no record objects. Anything the
    tables do not cover (headers, a timestamp before the batch's first, a field of
    16 KiB or more) takes the general encoder, to the same bytes.
    """

    __slots__ = ("_base_timestamp", "_buffer", "_compression", "_count", "_max_timestamp")

    def __init__(self, compression: Compression = Compression.NONE) -> None:
        if compression not in batch_codecs.CODECS:
            raise UnsupportedCompressionError(_codec_message(compression))
        self._compression = compression
        self._buffer = bytearray(BATCH_HEADER_BYTES)
        self._count = 0
        self._base_timestamp = 0
        self._max_timestamp = NO_TIMESTAMP

    @property
    def record_count(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        """Uncompressed size of the batch so far, header included."""
        return len(self._buffer)

    def append(
        self,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]] = (),
    ) -> int:
        """Add one record (offset delta = its position); returns `size_bytes` after it."""
        count = self._count
        if count:
            delta = timestamp - self._base_timestamp
            if timestamp > self._max_timestamp:
                self._max_timestamp = timestamp
        else:
            self._base_timestamp = timestamp
            # Kafka's maxTimestamp starts at NO_TIMESTAMP and only ever rises.
            self._max_timestamp = timestamp if timestamp > NO_TIMESTAMP else NO_TIMESTAMP
            delta = 0
        if delta >= 0 and not headers:
            try:
                record = b"".join(
                    (
                        ATTRIBUTES_AND_DELTA[delta],
                        _VARINTS[count],
                        NULL_FIELD if key is None else _VARINTS[len(key)],
                        key or b"",
                        NULL_FIELD if value is None else _VARINTS[len(value)],
                        value or b"",
                        NO_HEADERS,
                    )
                )
                buffer = self._buffer
                buffer += _VARINTS[len(record)]
            except IndexError:  # a value past the tables: nothing was appended yet
                pass
            else:
                buffer += record
                self._count = count + 1
                return len(buffer)
        self._buffer += encode_record(delta, count, key, value, headers)
        self._count = count + 1
        return len(self._buffer)

    def build(
        self,
        *,
        base_offset: int = 0,
        partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
        producer_id: int = NO_PRODUCER_ID,
        producer_epoch: int = NO_PRODUCER_EPOCH,
        base_sequence: int = NO_SEQUENCE,
        is_transactional: bool = False,
        is_control: bool = False,
        timestamp_type: int = 0,
        base_timestamp: int | None = None,
    ) -> bytes:
        if self._count == 0:
            raise InvalidRecordError("a record batch needs at least one record")
        first_timestamp = self._base_timestamp if base_timestamp is None else base_timestamp
        if first_timestamp != self._base_timestamp:
            raise InvalidRecordError("base_timestamp must be the first record's timestamp")
        buffer = self._buffer
        if self._compression != Compression.NONE:
            compressed = batch_codecs.compress(self._compression, buffer[BATCH_HEADER_BYTES:])
            buffer = bytearray(BATCH_HEADER_BYTES) + compressed
        attributes = int(self._compression)
        attributes |= TIMESTAMP_TYPE_BIT if timestamp_type else 0
        attributes |= TRANSACTIONAL_BIT if is_transactional else 0
        attributes |= CONTROL_BIT if is_control else 0
        _PREFIX.pack_into(
            buffer,
            0,
            base_offset,
            len(buffer) - LOG_OVERHEAD_BYTES,
            partition_leader_epoch,
            MAGIC_V2,
        )
        _AFTER_CRC.pack_into(
            buffer,
            CRC_START,
            attributes,
            self._count - 1,
            self._base_timestamp,
            self._max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            self._count,
        )
        _CRC.pack_into(buffer, 17, crc32c(memoryview(buffer)[CRC_START:]))
        return bytes(buffer)


def build_batch(
    records: Iterable[_RecordLike],
    *,
    base_offset: int = 0,
    partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
    compression: Compression = Compression.NONE,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    is_transactional: bool = False,
    is_control: bool = False,
    timestamp_type: int = 0,
) -> bytes:
    """One batch holding `records` (offset deltas 0..n-1, base timestamp = the first's)."""
    builder = BatchBuilder(compression)
    for record in records:
        builder.append(record.timestamp, record.key, record.value, record.headers)
    return builder.build(
        base_offset=base_offset,
        partition_leader_epoch=partition_leader_epoch,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        is_transactional=is_transactional,
        is_control=is_control,
        timestamp_type=timestamp_type,
    )


def build_control_batch(
    control_type: ControlRecordType,
    value: bytes,
    *,
    timestamp: int,
    base_offset: int = 0,
    partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    is_transactional: bool = False,
) -> bytes:
    """A control batch of one record whose key is (version 0, type)."""
    builder = BatchBuilder()
    builder.append(timestamp, _CONTROL_KEY.pack(0, control_type), value)
    return builder.build(
        base_offset=base_offset,
        partition_leader_epoch=partition_leader_epoch,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        is_transactional=is_transactional,
        is_control=True,
    )


def parse_control_record_key(key: bytes | None) -> ControlRecordType:
    if key is None or len(key) < _CONTROL_KEY.size:
        raise CorruptRecordError(f"control record key must be 4 bytes, got {key!r}")
    version, kind = _CONTROL_KEY.unpack_from(key)
    if version < 0:
        raise CorruptRecordError(f"control record key version {version} is negative")
    try:
        return ControlRecordType(kind)
    except ValueError:
        raise CorruptRecordError(f"unknown control record type {kind}") from None
