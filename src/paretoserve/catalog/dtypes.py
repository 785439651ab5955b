"""Numeric formats: bytes per value, and the names users may type for them."""

from __future__ import annotations

from paretoserve.errors import UserError

#: Bytes per stored value. int4/fp4 pack two values per byte; block scales are ignored.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5,
}

_ALIASES = {
    "float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
    "auto": "bf16", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "e4m3": "fp8", "w8a8": "int8", "awq": "int4",
    "gptq": "int4", "mxfp4": "fp4", "nvfp4": "fp4",
}


def normalize_dtype(name: str) -> str:
    """Canonical dtype name ("bf16", "fp8", ...) for a user-typed one; UserError if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise UserError(f"unknown dtype '{name}'; expected one of {', '.join(DTYPE_BYTES)}")
    return key


def dtype_bytes(name: str) -> float:
    """Bytes per value of dtype `name`."""
    return DTYPE_BYTES[normalize_dtype(name)]
