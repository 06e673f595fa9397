"""Phone numbers: every written form of a mainland mobile is one E.164 number, masked to its last four digits,
and redacted from any text whatever its form (hypothesis over the forms)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.phones import InvalidPhone, mask_phone, normalize_phone, redact

MOBILE = st.builds(lambda d, n: f"1{d}{n:09d}", st.sampled_from("3456789"), st.integers(0, 10**9 - 1))
SEP = st.sampled_from(["", " ", "-", ".", "  "])
FULL_WIDTH = str.maketrans("0123456789+", "".join(chr(0xFF10 + i) for i in range(10)) + "\uff0b")


@st.composite
def written(draw: st.DrawFn, mobile: str) -> str:
    """One of the ways a person or a POS writes the number."""
    a, b = draw(SEP), draw(SEP)
    body = f"{mobile[:3]}{a}{mobile[3:7]}{b}{mobile[7:]}"
    prefix = draw(st.sampled_from(["", "+86", "+86 ", "0086", "0086-", "86", "(+86)", "(+86) ", "+86-", "(86) "]))
    form = prefix + body
    if draw(st.booleans()):
        form = form.translate(FULL_WIDTH)
    return form


@given(st.data(), MOBILE)
def test_every_written_form_of_a_mobile_is_one_e164_number(data: st.DataObject, mobile: str) -> None:
    form = data.draw(written(mobile))
    assert normalize_phone(form) == "+86" + mobile
    assert normalize_phone(normalize_phone(form)) == "+86" + mobile


@given(
    st.builds(
        lambda d, n, k: f"+{d}{n}"[: 9 + k], st.integers(1, 9), st.integers(10**14, 10**15 - 1), st.integers(0, 7)
    )
)
def test_an_e164_number_stays_as_it_is_unless_it_is_a_malformed_mainland_mobile(number: str) -> None:
    try:
        assert normalize_phone(number) == number
    except InvalidPhone:
        assert number.startswith("+861")


@pytest.mark.parametrize(
    "bad",
    ["12", "000012", "+0123456789", "1381234567", "138123456789", "+86123", "phone", "+86 12812345678", "\uff11\uff12"],
)
def test_what_is_no_phone_number_is_refused(bad: str) -> None:
    with pytest.raises(InvalidPhone):
        normalize_phone(bad)


def test_landlines_and_other_countries() -> None:
    assert normalize_phone("021-6123-4567") == "+862161234567"
    assert normalize_phone("+44 20 7946 0958") == "+442079460958"
    assert normalize_phone("0044 20 7946 0958") == "+442079460958"


@given(st.data(), MOBILE)
def test_a_mask_shows_the_last_four_digits_only(data: st.DataObject, mobile: str) -> None:
    masked = mask_phone(data.draw(written(mobile)))
    assert re.sub(r"\D", "", masked) == mobile[-4:]


@given(
    st.data(), MOBILE, st.text(alphabet="abc =:\"'{},\n中文", max_size=20), st.text(alphabet="abc =:\"'{},", max_size=5)
)
def test_no_form_of_a_mobile_survives_redaction(data: st.DataObject, mobile: str, before: str, after: str) -> None:
    form = data.draw(written(mobile))
    out = redact(before + form + after)
    digits = "".join(c for c in out if c.isdigit())
    assert digits == mobile[-4:]
