"""Licences are SPDX expressions, checked with ``license-expression`` against the SPDX list it ships.

A malformed expression is refused, naming it; an id that is not on the list is kept, with unknown
conditions and an ``UnknownLicenseWarning``; known licences keep their conditions. Each case is
checked on the record the ledger stores and gives back.
"""

from __future__ import annotations

import re
import warnings

import pytest

from provenance.errors import InvalidParameterError
from provenance.records import KNOWN_LICENSES, License, UnknownLicenseWarning

MIT = (False, False, True)  # (non_commercial, share_alike, attribution)
UNKNOWN = (None, None, None)


def conditions(lic: License) -> tuple:
    return lic.non_commercial, lic.share_alike, lic.attribution


@pytest.fixture
def register(ledger, data_dir, write_jsonl):
    """``register(license)``: the licence the ledger stored for a dataset registered under it."""
    write_jsonl(data_dir / "a.jsonl", [{"text": "a document under some licence"}])
    names = iter(f"ds{i}" for i in range(100))

    def run(spdx: str | None) -> License:
        name = next(names)
        ledger.register_dataset(name, data_dir / "a.jsonl", license=spdx)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # reading a stored licence back never warns again
            return ledger.dataset(name).license

    return run


@pytest.mark.parametrize(
    ("given", "spdx", "expected"),
    [
        ("MIT", "MIT", MIT),
        ("cc-by-nc-sa-4.0", "CC-BY-NC-SA-4.0", (True, True, True)),  # canonical spelling
        ("GPL-3.0", "GPL-3.0-only", (False, True, True)),  # a deprecated id becomes its successor
        ("GPL-2.0+", "GPL-2.0-or-later", UNKNOWN),  # on the SPDX list, not in KNOWN_LICENSES
        ("MIT OR Apache-2.0", "MIT OR Apache-2.0", MIT),  # both demand the same: either will do
        ("MIT or CC-BY-NC-4.0", "MIT OR CC-BY-NC-4.0", MIT),  # MIT demands less on every condition
        ("CC-BY-SA-4.0 OR CC-BY-NC-4.0", "CC-BY-SA-4.0 OR CC-BY-NC-4.0", UNKNOWN),  # neither demands less
        ("MIT AND CC-BY-SA-4.0", "MIT AND CC-BY-SA-4.0", (False, True, True)),  # what either demands
        ("(MIT OR CC0-1.0) AND CC-BY-NC-4.0", "(MIT OR CC0-1.0) AND CC-BY-NC-4.0", (True, False, True)),
        ("Apache-2.0 WITH LLVM-exception", "Apache-2.0 WITH LLVM-exception", MIT),  # Apache-2.0's, an upper bound
        ("LicenseRef-my-licence", "LicenseRef-my-licence", UNKNOWN),  # user-defined: no warning
        ("DocumentRef-spdx-tool-1.2:LicenseRef-x", "DocumentRef-spdx-tool-1.2:LicenseRef-x", UNKNOWN),
    ],
)
def test_valid_expressions_are_stored_canonical_with_their_conditions(register, recwarn, given, spdx, expected):
    lic = register(given)
    assert lic.spdx == spdx
    assert conditions(lic) == expected
    assert lic.known == (expected != UNKNOWN)
    assert not [w for w in recwarn if issubclass(w.category, UnknownLicenseWarning)]


@pytest.mark.parametrize(("given", "unknown"), [("Not-A-Licence-1.0", "Not-A-Licence-1.0"),
                                               ("MIT OR cc-by-5.0", "cc-by-5.0")])
def test_unknown_ids_are_kept_with_a_warning_and_unknown_conditions(register, given, unknown):
    with pytest.warns(UnknownLicenseWarning, match=re.escape(f"not on the SPDX list: {unknown}")) as caught:
        lic = register(given)
    assert len(caught) == 1 and repr(given) in str(caught[0].message) and caught[0].filename == __file__  # the caller
    assert lic == License(spdx=given)
    assert conditions(lic) == UNKNOWN and not lic.known and lic.url is None


@pytest.mark.parametrize("given", ["MIT AND (", "MIT OR", "OR MIT", "MIT Apache-2.0", "MIT/Apache-2.0",
                                   "my licence", "LLVM-exception", "MIT WITH Apache-2.0", "free for all!"])
def test_malformed_expressions_are_refused_naming_them(ledger, data_dir, write_jsonl, given):
    write_jsonl(data_dir / "a.jsonl", [{"text": "a document"}])
    with pytest.raises(InvalidParameterError, match=re.escape(f"license {given!r}")):
        ledger.register_dataset("bad", data_dir / "a.jsonl", license=given)
    assert ledger.datasets() == []


@pytest.mark.parametrize("given", [None, "", "  ", "unknown", "NONE", "NOASSERTION"])
def test_no_licence_is_unknown(register, given):
    assert register(given) == License()


def test_known_licences_keep_their_ids_and_conditions():
    for spdx, flags in KNOWN_LICENSES.items():
        lic = License.from_spdx(spdx)
        assert (lic.spdx, conditions(lic)) == (spdx, flags)
        assert lic.url == f"https://spdx.org/licenses/{spdx}.html"


@pytest.mark.parametrize(
    ("spdx", "url"),
    [
        ("GPL-2.0-or-later", "https://spdx.org/licenses/GPL-2.0-or-later.html"),
        ("MIT OR Apache-2.0", None),  # an expression has no page
        ("Apache-2.0 WITH LLVM-exception", None),
        ("LicenseRef-scancode-public-domain", None),  # ScanCode's key, not on the SPDX list
        ("LicenseRef-my-licence", None),
        ("LLVM-exception", None),  # an exception, not a licence
        (None, None),
    ],
)
def test_url_only_for_ids_on_the_spdx_list(spdx, url):
    assert License(spdx=spdx).url == url
