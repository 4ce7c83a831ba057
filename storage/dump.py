"""Print a partition directory or segment file batch by batch, like kafka-dump-log.

    python -m storage.dump PATH [--records]

PATH is a partition directory (every segment in offset order, then its epoch cache
and checkpoints), a `.log` segment, or a `.index` / `.timeindex` file. A batch whose
CRC fails is printed with `isvalid: false` and the dump goes on; a batch whose length
field is impossible ends the dump of that file with the reason, since nothing after
it can be located.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import TextIO

from storage.fs import OsFileSystem
from storage.index import OFFSET_ENTRY, TIME_ENTRY
from storage.records import (
    BATCH_HEADER_BYTES,
    BatchHeader,
    Compression,
    RecordBatchError,
    compute_crc,
    iter_records,
    read_header,
)
from storage.segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX

READ_CHUNK_BYTES = 1 << 20


def _format_header(position: int, header: BatchHeader, crc_valid: bool) -> str:
    compression = Compression(header.compression).name.lower()
    timestamp_kind = "LogAppendTime" if header.timestamp_type else "CreateTime"
    return (
        f"baseOffset: {header.base_offset} lastOffset: {header.last_offset} "
        f"count: {header.record_count} baseSequence: {header.base_sequence} "
        f"lastSequence: {header.last_sequence} producerId: {header.producer_id} "
        f"producerEpoch: {header.producer_epoch} "
        f"partitionLeaderEpoch: {header.partition_leader_epoch} "
        f"isTransactional: {str(header.is_transactional).lower()} "
        f"isControl: {str(header.is_control).lower()} position: {position} "
        f"{timestamp_kind}: {header.max_timestamp} size: {header.size_bytes} "
        f"magic: {header.magic} compresscodec: {compression} crc: {header.crc} "
        f"isvalid: {str(crc_valid).lower()}"
    )


def _show_bytes(data: bytes | None) -> str:
    if data is None:
        return "null"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + data.hex()
    return text if text.isprintable() else repr(text)


def iter_segment_batches(path: str) -> Iterator[tuple[int, BatchHeader | None, bytes, str | None]]:
    """(position, header, batch bytes, problem) per batch; header None ends the file."""
    handle = OsFileSystem().open(path, create=False)
    try:
        size = handle.size()
        position = 0
        while position < size:
            try:
                header = read_header(handle.read_at(position, BATCH_HEADER_BYTES))
            except RecordBatchError as error:
                yield position, None, b"", str(error)
                return
            if position + header.size_bytes > size:
                remaining = size - position
                yield (
                    position,
                    None,
                    b"",
                    f"partial batch: {remaining} of {header.size_bytes} bytes",
                )
                return
            data = handle.read_at(position, header.size_bytes)
            yield position, header, data, None
            position += header.size_bytes
    finally:
        handle.close()


def dump_segment(path: str, out: TextIO, *, records: bool) -> int:
    """Print one segment; return how many problems were found."""
    problems = 0
    base = os.path.basename(path)[: -len(LOG_SUFFIX)]
    print(f"Dumping {path}", file=out)
    print(f"Log starting offset: {int(base) if base.isdigit() else '?'}", file=out)
    for position, header, data, problem in iter_segment_batches(path):
        if header is None:
            print(f"stopped at position {position}: {problem}", file=out)
            return problems + 1
        crc_valid = compute_crc(data) == header.crc
        problems += not crc_valid
        print(_format_header(position, header, crc_valid), file=out)
        if records and crc_valid:
            problems += _dump_records(data, out)
    return problems


def _dump_records(batch: bytes, out: TextIO) -> int:
    try:
        for record in iter_records(batch):
            headers = ", ".join(key for key, _ in record.headers)
            key_size = -1 if record.key is None else len(record.key)
            value_size = -1 if record.value is None else len(record.value)
            print(
                f"| offset: {record.offset} CreateTime: {record.timestamp} "
                f"keySize: {key_size} valueSize: {value_size} headerKeys: [{headers}] "
                f"key: {_show_bytes(record.key)} payload: {_show_bytes(record.value)}",
                file=out,
            )
    except RecordBatchError as error:
        print(f"| records unreadable: {error}", file=out)
        return 1
    return 0


def dump_index(path: str, out: TextIO) -> int:
    base_text = os.path.basename(path).split(".")[0]
    base = int(base_text) if base_text.isdigit() else 0
    with open(path, "rb") as handle:
        data = handle.read()
    print(f"Dumping {path}", file=out)
    if path.endswith(TIME_INDEX_SUFFIX):
        entry = TIME_ENTRY
        whole = len(data) - len(data) % entry.size
        for timestamp, relative in entry.iter_unpack(data[:whole]):
            print(f"timestamp: {timestamp} offset: {base + relative}", file=out)
    else:
        entry = OFFSET_ENTRY
        whole = len(data) - len(data) % entry.size
        for relative, position in entry.iter_unpack(data[:whole]):
            print(f"offset: {base + relative} position: {position}", file=out)
    if whole != len(data):
        print(f"trailing {len(data) - whole} bytes are not a whole entry", file=out)
        return 1
    return 0


def dump_path(path: str, out: TextIO, *, records: bool) -> int:
    if os.path.isdir(path):
        problems = 0
        for name in sorted(os.listdir(path)):
            child = os.path.join(path, name)
            if name.endswith(LOG_SUFFIX):
                problems += dump_segment(child, out, records=records)
            elif not name.endswith((INDEX_SUFFIX, TIME_INDEX_SUFFIX)) and os.path.isfile(child):
                with open(child, "rb") as handle:
                    content = handle.read(4096).decode("utf-8", errors="replace")
                print(f"{name}:\n  " + content.strip().replace("\n", "\n  "), file=out)
        return problems
    if path.endswith(LOG_SUFFIX):
        return dump_segment(path, out, records=records)
    if path.endswith((INDEX_SUFFIX, TIME_INDEX_SUFFIX)):
        return dump_index(path, out)
    raise ValueError(f"{path}: not a partition directory, .log, .index or .timeindex file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m storage.dump", description="Print a log directory or segment."
    )
    parser.add_argument("path", help="partition directory, .log, .index or .timeindex file")
    parser.add_argument("--records", action="store_true", help="print every record too")
    args = parser.parse_args(argv)
    try:
        problems = dump_path(args.path, sys.stdout, records=args.records)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if problems:
        print(f"{problems} problem(s) found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
