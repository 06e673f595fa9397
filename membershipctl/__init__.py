"""``membershipctl``: operate the membership platform from a terminal (SPEC §7).

An HTTP client of the five services' APIs (``bootstrap`` excepted: it creates the very
first key, so it talks to the database). Tables for people, ``--json`` for scripts.
"""
