"""pipeline/audience/address_sets.py: an address set matched as Int64 digits (plain E.164) and as text (anything
else) finds exactly what matching the normalised texts finds; an AddressSet made from a column travels to
another process with its matcher."""

from __future__ import annotations

import pickle
import re
from concurrent.futures import Future, ThreadPoolExecutor

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.audience.address_sets import AddressSet, matcher

_ADDRESSES = st.one_of(
    st.from_regex(r"\+?[1-9][0-9]{6,14}", fullmatch=True),  # plain once normalised
    st.from_regex(r"\+0[0-9]{5,8}", fullmatch=True),  # a leading 0: not plain E.164, matched as text
    st.from_regex(r"\+[1-9][0-9]{18,20}", fullmatch=True),  # too long for an Int64: text
    st.from_regex(r"\+44 7400 [0-9]{6}", fullmatch=True),  # written with spaces
)


def _e164(address: str) -> str:
    return "+" + re.sub(r"[^0-9]", "", address)


@settings(max_examples=60, deadline=None)
@given(st.lists(_ADDRESSES, max_size=12), st.lists(_ADDRESSES, max_size=12))
def test_matching_finds_what_the_normalised_texts_find(kept: list[str], looked_up: list[str]) -> None:
    batch = pl.DataFrame({"phone_e164": [_e164(a) for a in looked_up + kept[:3]] + [None]},
                         schema={"phone_e164": pl.String})
    expected = [p is not None and p in {_e164(a) for a in kept} for p in batch["phone_e164"]]
    for addresses in (frozenset(kept), kept, AddressSet.from_column(pl.Series(kept, dtype=pl.String))):
        found = batch.select(matcher(addresses).hit("phone_e164"))["phone_e164"].to_list()
        assert found == expected


def test_an_address_set_keeps_its_matcher_through_pickling_and_compares_as_a_set() -> None:
    made = AddressSet.from_column(pl.Series(["+447400123456", "447400123457", "+0123", "", "+447400123456", None],
                                            dtype=pl.String))
    assert made == frozenset({"+447400123456", "447400123457", "+0123", ""}) and len(made) == 4
    assert "+447400123456" in made and "+447400123457" not in made  # the texts as they came
    again = pickle.loads(pickle.dumps(made))
    assert isinstance(again, AddressSet) and again == made and hash(again) == hash(made)
    assert sorted(again.matcher.numbers.to_list()) == [447400123456, 447400123457]
    assert again.matcher.others.to_list() == ["+0123"]
    assert again.matcher.keys() == ["+0123", "+447400123456", "+447400123457"]
    assert matcher(again) is again.matcher  # not made again for every batch


def test_a_set_still_being_read_is_waited_for_where_it_is_first_matched_and_its_error_surfaces_there() -> None:
    batch = pl.DataFrame({"phone_e164": ["+447400123456", "+447400123457"]})
    future: Future[AddressSet] = Future()
    later = AddressSet.later(future)
    asked = ThreadPoolExecutor(1).submit(lambda: batch.select(matcher(later).hit())["phone_e164"].to_list())
    assert not asked.done()  # waiting for the set
    future.set_result(AddressSet.from_column(pl.Series(["+447400123457"])))
    assert asked.result(timeout=10) == [False, True]
    assert later == {"+447400123457"} and pickle.loads(pickle.dumps(later)) == later

    failed: Future[AddressSet] = Future()
    failed.set_exception(ConnectionError("store gone"))
    with pytest.raises(ConnectionError, match="store gone"):
        matcher(AddressSet.later(failed))
