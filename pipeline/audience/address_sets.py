"""The address sets every batch's numbers are matched against (suppressions, the frequency cap's capped recipients),
made ready once per preparation instead of once per batch.

A set is normalised once ('+<digits>' of each address) and split for matching: plain E.164 numbers
as Int64 digits, anything else as text. Polars' `is_in` hashes the whole set on every call; over a cap's million
keys an integer set takes 0.04 s per 330k-row batch where the texts take 0.19 s (measured, Polars 2.1).

`AddressSet` is a set kept as those parts: `frequency.capped_recipients` counts the store's keys as Int64 digits and
hands them over as they are, so a million capped keys never become Python strings (0.26 s) nor a Series again;
its texts are made only if someone asks for them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator, Set
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import polars as pl

# A plain E.164 number ("+447400123456"): no leading 0 (calling codes start 1-9), at most 18 digits, so its digits
# are one Int64 that names exactly one text. phonenumbers writes every valid number so.
PLAIN_E164 = r"^\+[1-9][0-9]{0,17}$"


def split_plain(text: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(the plain E.164 texts as Int64 digits, the other texts as they are); nulls in neither."""
    plain = text.str.contains(PLAIN_E164).fill_null(False)
    return text.filter(plain).str.slice(1).cast(pl.Int64), text.filter(~plain & text.is_not_null())


@dataclass(frozen=True)
class Matcher:
    """A normalised address set, split for matching (repeats may remain: `is_in` does not mind them)."""

    numbers: pl.Series  # the plain E.164 addresses as Int64 digits
    others: pl.Series  # the rest, normalised, as text

    @classmethod
    def of(cls, addresses: pl.Series) -> Matcher:
        """The matcher of addresses in any notation ('+<digits>' of each; none without a digit)."""
        numbers, rest = split_plain(addresses.cast(pl.String))
        if rest.len():  # only those not written as E.164 already go through the regex (a store's keys all are)
            digits = rest.str.replace_all(r"\D", "")
            more, rest = split_plain("+" + digits.filter(digits != ""))
            numbers = pl.concat([numbers, more])
        return cls(numbers, rest)

    def keys(self) -> list[str]:
        """Every normalised address, once, sorted (for looking at)."""
        return sorted({f"+{n}" for n in self.numbers.to_list()} | set(self.others.to_list()))

    def hit(self, column: str = "phone_e164") -> pl.Expr:
        """Whether the column's address (already normalised) is in the set; false for null."""
        col = pl.col(column)
        plain = col.str.contains(PLAIN_E164)
        found = pl.when(plain).then(col.str.slice(1).cast(pl.Int64, strict=False)).is_in(self.numbers)
        if self.others.len():
            found = found | (~plain & col.is_in(self.others))
        return found.fill_null(False)


class AddressSet(Set[str]):
    """A set of addresses kept as its matcher's parts (see the module's docstring): plain E.164 addresses as Int64
    digits, any other as the text it came as. Its texts are made only when someone asks for them (`in`, iteration),
    never for matching; `later` gives one whose parts are still being read (e.g. from the store, in a thread)."""

    def __init__(self, numbers: pl.Series, texts: pl.Series, *, later: Future[AddressSet] | None = None) -> None:
        self._parts = None if later is not None else (numbers, texts)  # distinct each, disjoint
        self._later = later
        self._matcher: Matcher | None = None
        self._texts: frozenset[str] | None = None
        self._lock = threading.Lock()  # batches in several threads ask for the matcher at once

    @classmethod
    def later(cls, future: Future[AddressSet]) -> AddressSet:
        """The set `future` gives, waited for where it is first needed (preparation: after a batch's numbers are
        checked, so the first batches are checked while it is read)."""
        none = pl.Series(dtype=pl.Int64)
        return cls(none, none, later=future)

    @classmethod
    def from_column(cls, addresses: pl.Series) -> AddressSet:
        """The distinct addresses of a Polars column (texts)."""
        numbers, texts = split_plain(addresses.cast(pl.String))
        return cls(numbers.unique(), texts.unique())

    def _resolved(self) -> tuple[pl.Series, pl.Series]:
        if self._parts is None:
            assert self._later is not None
            self._parts = self._later.result()._resolved()  # raises what reading the set raised
        return self._parts

    @property
    def matcher(self) -> Matcher:
        with self._lock:
            if self._matcher is None:
                numbers, texts = self._resolved()
                normalised = Matcher.of(texts)  # only the texts not plain already (rare in a store's keys)
                self._matcher = Matcher(pl.concat([numbers, normalised.numbers]), normalised.others)
            return self._matcher

    def _as_texts(self) -> frozenset[str]:
        with self._lock:
            if self._texts is None:
                numbers, texts = self._resolved()
                self._texts = frozenset(("+" + numbers.cast(pl.String)).to_list() + texts.to_list())
            return self._texts

    def __len__(self) -> int:
        numbers, texts = self._resolved()
        return numbers.len() + texts.len()

    def __contains__(self, address: object) -> bool:
        return address in self._as_texts()

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_texts())

    __hash__ = Set._hash

    def __repr__(self) -> str:
        return f"AddressSet({len(self)} addresses)"

    def __reduce__(self) -> tuple[Any, ...]:  # pickled for chunk workers in other processes
        return AddressSet, self._resolved()


def matcher(addresses: Iterable[str]) -> Matcher:
    """The Matcher of any addresses: an AddressSet's own; a frozenset's (what preparation passes every batch)
    made once and kept for the next batches, also when batches in several threads ask at once."""
    if isinstance(addresses, AddressSet):
        return addresses.matcher
    if isinstance(addresses, frozenset):
        with _MAKING:  # the first thread makes it, the others wait for it
            return _set_matcher(addresses)
    return Matcher.of(pl.Series("address", list(addresses), dtype=pl.String))


_MAKING = threading.Lock()


@functools.lru_cache(maxsize=2)  # the suppressions and the capped, batch after batch
def _set_matcher(addresses: frozenset[str]) -> Matcher:
    return Matcher.of(pl.Series("address", list(addresses), dtype=pl.String))
