"""Column types shared by the tables.

Money is stored as an integer count of 1e-10 USD. Every database sums integers exactly, SQLite
has no exact decimal type (its NUMERIC is a float), and 1e-10 USD resolves the smallest per-token
prices providers publish (fractions of a millionth of a dollar) while a signed 64-bit column still
holds over 900 million USD.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Dialect
from sqlalchemy.types import TypeDecorator

MONEY_UNIT = Decimal("1e-10")


class Money(TypeDecorator[Decimal]):
    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int((Decimal(value) / MONEY_UNIT).to_integral_value())

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return (Decimal(int(value)) * MONEY_UNIT).normalize()
