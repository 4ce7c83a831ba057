"""What every controller manager returns: the records to commit and the answer to give."""

from __future__ import annotations

from typing import Any

import attrs

from kraft.metadata.records import MetadataRecord


@attrs.frozen(kw_only=True)
class ControllerResult:
    """`response` is only given to the caller once `records` are committed."""

    records: tuple[MetadataRecord, ...]
    response: Any
