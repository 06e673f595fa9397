"""Phone numbers in one form, E.164 (``+8613812345678``), so every way of writing a number is one member.

Written forms accepted: ``+86 138 1234 5678``, ``0086-138-1234-5678``, ``86 13812345678``, ``(+86)138...``,
``138 1234 5678`` (a number without a country code is a mainland one; a landline's trunk ``0`` is dropped),
and other countries' numbers with ``+`` or ``00``. Spaces, dashes, dots and brackets are ignored, full-width
digits are read as digits. A mainland mobile must have 11 digits (1[3-9]...).
"""

from __future__ import annotations

import re
import unicodedata

CN = "86"
_SEPARATORS = re.compile(r"[\s\-.()\uff08\uff09]")
_DIGITS = re.compile(r"^\d+$")


class InvalidPhone(ValueError):
    pass


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.digit(c)) if c.isdigit() else c for c in text)


def normalize_phone(raw: str) -> str:
    """The number in E.164 (``+<country><number>``); :class:`InvalidPhone` (a ValueError) if it is none."""
    text = _ascii_digits(_SEPARATORS.sub("", unicodedata.normalize("NFKC", raw)))
    if text.startswith("+"):
        digits = text[1:]
    elif text.startswith("00"):
        digits = text[2:]
    elif len(text) == 13 and text.startswith("861"):
        digits = text  # 86 and a mainland mobile, without the +
    else:
        digits = CN + (text[1:] if text.startswith("0") else text)
    if not _DIGITS.match(digits) or digits.startswith("0") or not 8 <= len(digits) <= 15:
        raise InvalidPhone("phone must be a phone number: 8 to 15 digits with the country code, or a mainland one")
    if digits.startswith(CN + "1") and not re.fullmatch(r"861[3-9]\d{9}", digits):
        raise InvalidPhone("a mainland mobile number has 11 digits, 1[3-9] and nine more")
    return "+" + digits


def mask_phone(phone: str) -> str:
    """``*******5678``: the last four digits only, whatever the form (what a pos/app key and a log see)."""
    digits = _ascii_digits("".join(c for c in phone if c.isdigit()))
    return "*" * 7 + digits[-4:] if len(digits) >= 8 else "*" * len(phone)


#: a mainland mobile in any written form (optionally +86/0086/86, separators between digits) inside any text
_SEP = r"[\s\-.()\uff08\uff09]*"  # spaces, dashes, dots, brackets (full-width too)
PHONE_IN_TEXT = re.compile(
    r"(?<![\d+\uff0b])(?:[(\uff08]?(?:[+\uff0b]|[0\uff10]{2})?[8\uff18][6\uff16][)\uff09]?"
    + _SEP
    + ")?[1\uff11]"
    + _SEP
    + r"[3-9\uff13-\uff19](?:"
    + _SEP
    + r"\d){9}(?!\d)"
)


def redact(text: str) -> str:
    return PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)
