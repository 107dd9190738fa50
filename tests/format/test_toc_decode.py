"""The fast paths of TOC decoding (toc.py, names.py) give exactly what the general rules give."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lazypull.format import FormatError
from lazypull.format.names import clean_entry_name, go_clean
from lazypull.format.toc import (
    ENTRY_TYPES,
    TOC,
    TOCEntry,
    _parse_fast,
    _parse_general,
    parse_rfc3339,
    parse_toc,
)

_INTS = {"size": "size", "mode": "mode", "uid": "uid", "gid": "gid", "offset": "offset",
         "inneroffset": "inner_offset", "devmajor": "dev_major", "devminor": "dev_minor",
         "chunkoffset": "chunk_offset", "chunksize": "chunk_size", "endoffset": "end_offset"}
_STRS = {"name": "name", "type": "type", "linkname": "link_name", "username": "user_name",
         "groupname": "group_name", "digest": "digest", "chunkdigest": "chunk_digest",
         "chunktype": "chunk_type"}


def _reference_entry(index: int, obj: Any) -> TOCEntry:
    """The decoding rules written plainly, one key at a time (what the fast paths must agree with)."""
    if not isinstance(obj, dict):
        raise FormatError(f"TOC entry {index} is not a JSON object")
    e = TOCEntry(name="", type="")
    seen_name = seen_type = False
    for key, value in obj.items():
        low = key.lower()
        if value is None:
            continue
        if low in _INTS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise FormatError(f"TOC entry {index}: {key!r} must be an integer, not {value!r}")
            setattr(e, _INTS[low], value)
        elif low in _STRS:
            if not isinstance(value, str):
                raise FormatError(f"TOC entry {index}: {key!r} must be a string, not {value!r}")
            setattr(e, _STRS[low], value)
            seen_name = seen_name or low == "name"
            seen_type = seen_type or low == "type"
        elif low == "modtime":
            if not isinstance(value, str):
                raise FormatError(f"TOC entry {index}: 'modtime' must be a string")
            e.modtime = parse_rfc3339(value)
        elif low == "xattrs":
            if not isinstance(value, dict):
                raise FormatError(f"TOC entry {index}: 'xattrs' must be an object")
            for xk, xv in value.items():
                if not isinstance(xv, str):
                    raise FormatError(f"TOC entry {index}: xattr {xk!r} must be a base64 string")
                try:
                    e.xattrs[xk] = base64.b64decode(xv, validate=True)
                except (binascii.Error, ValueError) as err:
                    raise FormatError(f"TOC entry {index}: xattr {xk!r} is not valid base64") from err
    if not seen_type or e.type not in ENTRY_TYPES:
        raise FormatError(f"TOC entry {index} ({e.name!r}) has unknown type {e.type!r}")
    if not seen_name and e.type != "chunk":
        raise FormatError(f"TOC entry {index} has no name")
    for attr in ("size", "offset", "inner_offset", "chunk_offset", "chunk_size", "end_offset"):
        if getattr(e, attr) < 0:
            raise FormatError(f"TOC entry {index} ({e.name!r}): negative {attr}")
    return e


KEYS = st.sampled_from([
    "name", "Name", "NAME", "type", "TYPE", "size", "Size", "modtime", "ModTime", "linkName", "linkname",
    "mode", "uid", "gid", "userName", "groupName", "offset", "innerOffset", "devMajor", "devMinor", "xattrs",
    "XAttrs", "digest", "chunkOffset", "chunkSize", "CHUNKSIZE", "chunkDigest", "endOffset", "chunkType",
    "accesstime", "other",
])
VALUES = (st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=False)
          | st.sampled_from(sorted(ENTRY_TYPES)) | st.text(max_size=6)
          | st.sampled_from(["2021-02-03T04:05:06Z", "2021-02-30T04:05:06Z", "2021-02-03t04:05:06z",
                             "2021-02-03T04:05:06.25+02:00", "0000-01-01T00:00:00Z", "./a/"])
          | st.dictionaries(st.text(max_size=4), st.sampled_from(["", "eQ==", "eQ", "*", 1]), max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(st.lists(st.tuples(KEYS, VALUES), max_size=8), min_size=1, max_size=4))
def test_decoding_matches_the_plain_rules(entries: list[list[tuple[str, object]]]) -> None:
    objs = [dict(pairs) for pairs in entries]
    data = json.dumps({"version": 1, "entries": objs}).encode()
    try:
        expected: list[TOCEntry] | str = [_reference_entry(i, o) for i, o in enumerate(objs)]
    except FormatError as err:
        expected = str(err)
    try:
        got: list[TOCEntry] | str = parse_toc(data).entries
    except FormatError as err:
        got = str(err)
    assert got == expected


def test_key_spellings_order_null_and_merged_xattrs() -> None:
    entry = parse_toc(json.dumps({"entries": [{
        "name": "a", "type": "reg", "size": 5, "Size": 7, "mode": 1, "MODE": None, "xattrs": {"k": "eQ=="},
        "XATTRS": {"l": "eg=="}, "modtime": "2021-02-03T04:05:06Z", "MODTIME": None, "unknown": [1],
    }]}).encode()).entries[0]
    assert (entry.size, entry.mode, entry.xattrs) == (7, 1, {"k": b"y", "l": b"z"})
    assert entry.modtime == datetime(2021, 2, 3, 4, 5, 6, tzinfo=UTC)


@pytest.mark.parametrize("bad", [{"size": True}, {"Size": "1"}, {"offset": -1}, {"modtime": 5},
                                 {"linkName": 3}, {"xattrs": {"k": "*"}}])
def test_bad_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(FormatError, match="TOC entry 0"):
        parse_toc(json.dumps({"entries": [{"name": "a", "type": "reg", **bad}]}).encode())


DIGITS = st.integers(0, 10**4 - 1).map(lambda n: f"{n:04d}")
TWO = st.integers(0, 99).map(lambda n: f"{n:02d}")


@given(y=DIGITS, mo=TWO, d=TWO, h=TWO, mi=TWO, s=TWO, t=st.sampled_from("Tt"), z=st.sampled_from("Zz"))
def test_rfc3339_fast_path_agrees_with_the_general_parser(y: str, mo: str, d: str, h: str, mi: str, s: str,
                                                          t: str, z: str) -> None:
    fast = parse_rfc3339(f"{y}-{mo}-{d}{t}{h}:{mi}:{s}{z}")
    general = parse_rfc3339(f"{y}-{mo}-{d}{t}{h}:{mi}:{s}+00:00")    # the regex path
    assert fast == general


def test_rfc3339_other_digits_and_shapes() -> None:
    arabic_indic_2020 = "\u0662\u0660\u0662\u0660"     # the regex's \d takes them, as before
    assert parse_rfc3339(f"{arabic_indic_2020}-01-02T03:04:05Z") == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_rfc3339("2020-01-02 03:04:05Z") is None
    assert parse_rfc3339("2020-01-02T03:04:05") is None
    assert parse_rfc3339("2020-01-32T03:04:05Z") is None
    assert parse_rfc3339("2020-01-02T03:04:05.5Z") == datetime(2020, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)


def test_entries_with_one_modtime_string_share_the_value_but_not_with_others() -> None:
    toc = parse_toc(json.dumps({"entries": [
        {"name": n, "type": "dir", "modtime": m}
        for n, m in (("a", "2021-01-01T00:00:00Z"), ("b", "2021-01-01T00:00:00Z"),
                     ("c", "2022-01-01T00:00:00Z"), ("d", "bad"), ("e", "2021-01-01T00:00:00Z"))]}).encode())
    times = [e.modtime for e in toc.entries]
    assert times[0] == times[1] == times[4] == datetime(2021, 1, 1, tzinfo=UTC)
    assert times[2] == datetime(2022, 1, 1, tzinfo=UTC) and times[3] is None


@given(name=st.text(alphabet="./ab", max_size=12))
def test_clean_entry_name_is_go_path_clean(name: str) -> None:
    assert clean_entry_name(name) == go_clean("/" + name)[1:]


@pytest.mark.parametrize(("entry", "expected"), [
    ('"xattrs": {"a": "eQ=="}, "xattrs": {"b": "eg=="}', {"xattrs": {"b": b"z"}}),
    ('"xattrs": {"a": "eQ=="}, "xattrs": {}', {"xattrs": {}}),
    ('"xattrs": {"a": "eQ==", "a": "eg=="}', {"xattrs": {"a": b"z"}}),
    ('"modtime": "2021-02-03T04:05:06Z", "modtime": null', {"modtime": None}),
    ('"numLink": 3, "size": 1', {"size": 1, "num_link": 0}),
    ('"numLink": 0, "size": 1', {"size": 1, "num_link": 0}),
    ('"size": 1, "size": 2', {"size": 2}),
    ('"endOffset": 9', {"end_offset": 9}),
], ids=["xattrs-twice", "xattrs-then-empty", "xattr-twice", "modtime-then-null", "numlink-ignored",
        "numlink-zero", "size-twice", "cs-key"])
def test_repeated_and_ignored_keys(entry: str, expected: dict[str, object]) -> None:
    """Raw JSON (json.dumps cannot repeat a key): a repeated key's last value wins (as Python's json module
    has always decided here), ``numLink`` is ignored, whichever path decodes it."""
    toc = parse_toc(('{"version": 1, "entries": [{"name": "a", "type": "reg", ' + entry + "}]}").encode())
    got = toc.entries[0]
    assert {k: getattr(got, k) for k in expected} == expected
    assert toc.schema == ("cs" if "end_offset" in expected else "estargz")


@pytest.mark.parametrize("name", ["tiny.esgz.toc.json", "small.esgz.toc.json", "small-prio.esgz.toc.json",
                                  "many-min.esgz.toc.json", "tiny.zstd.toc.json", "tiny.cs.zstd.toc.json"])
def test_go_made_tocs_take_the_fast_path_with_the_general_result(vectors: Path, name: str) -> None:
    data = (vectors / name).read_bytes()
    fast, general = _parse_fast(data), _parse_general(data)
    assert fast is not None, "a TOC as Go writes it is decoded in C"
    assert (fast.entries, fast.version, fast.schema) == (general.entries, general.version, general.schema)
    assert fast.schema == ("cs" if ".cs." in name else "estargz")


CANONICAL = {
    "name": st.text(max_size=6) | st.sampled_from(["./a/", "a//b", "/x"]),
    "type": st.sampled_from(sorted(ENTRY_TYPES)) | st.sampled_from(["socket", ""]),
    "size": st.integers(-1, 2**70), "modtime": st.sampled_from([
        "2021-02-03T04:05:06Z", "2021-02-30T04:05:06Z", "2021-02-03t04:05:06z", "2021-02-03T24:00:00Z",
        "2021-02-03T04:05:60Z", "2021-02-03T04:05:06.25+02:00", "0000-01-01T00:00:00Z", "", "bad"]),
    "linkName": st.text(max_size=4), "mode": st.integers(-1, 2**40), "uid": st.integers(0, 2**33),
    "gid": st.integers(0, 9), "userName": st.text(max_size=3), "groupName": st.text(max_size=3),
    "offset": st.integers(-1, 2**40), "innerOffset": st.integers(0, 9), "devMajor": st.integers(-1, 9),
    "devMinor": st.integers(0, 9), "digest": st.text(max_size=3), "chunkOffset": st.integers(0, 9),
    "chunkSize": st.integers(0, 9), "chunkDigest": st.text(max_size=3), "endOffset": st.integers(0, 9),
    "chunkType": st.sampled_from(["", "zeros"]), "numLink": st.integers(0, 2),
    "xattrs": st.dictionaries(st.text(max_size=3), st.sampled_from(["", "eQ==", "eR==", "eQ", "*"]),
                              max_size=2),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(st.fixed_dictionaries({"name": CANONICAL["name"], "type": CANONICAL["type"]},
                                              optional={k: v for k, v in CANONICAL.items()
                                                        if k not in ("name", "type")}),
                        max_size=4),
       top=st.fixed_dictionaries({}, optional={"version": st.integers(0, 2),
                                               "tarSplitDigest": st.text(max_size=2)}))
def test_fast_decoder_agrees_with_the_general_rules(entries: list[dict[str, object]],
                                                    top: dict[str, object]) -> None:
    """TOCs spelt as writers spell them, with odd values: the C decoder gives the general rules' result or
    leaves the TOC to them."""
    data = json.dumps({**top, "entries": entries}).encode()
    try:
        general: TOC | str = _parse_general(data)
    except FormatError as err:
        general = str(err)
    fast = _parse_fast(data)
    event("fast path" if fast is not None else "general path")
    if fast is None:
        return      # parse_toc gives the general result
    assert isinstance(general, TOC), f"the fast path took what the general rules refuse: {general}"
    assert (fast.entries, fast.version, fast.tar_split_digest, fast.schema) == (
        general.entries, general.version, general.tar_split_digest, general.schema)
