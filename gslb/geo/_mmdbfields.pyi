"""Types of the MMDB record decoder (gslb/geo/_mmdbfields.c); positions: a contiguous int64 buffer."""

Fields = tuple[str | None, str | None, str | None, float | None, float | None, str | None]

def fields(database: bytes, data_start: int, positions: object, /) -> list[Fields | None]: ...
