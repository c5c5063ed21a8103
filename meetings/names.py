"""Names in any script: how party and body names are compared, and the country codes.

Two names are the same name when their keys are equal: NFKC, then Unicode case folding,
then NFKC again (Unicode §3.13 "default caseless matching", UAX #15), so "SPÖ", "spö" and
"SPÖ" written with a combining diaeresis are one party. The key is stored beside the name,
under a unique constraint, so that SQLite (whose lower() knows only ASCII) and PostgreSQL
compare alike. A looser form finds near-duplicates, names that differ only by accents on
Latin letters, spaces or punctuation ("Parti Socialiste", "Parti-Socialiste").
"""

from __future__ import annotations

import unicodedata

# ISO 3166-1 alpha-2, the 249 officially assigned codes (as in Debian's iso-codes 4.15
# and the tz database's iso3166.tab). A party's country is one of these; user-assigned
# codes such as XK are not.
COUNTRIES = frozenset(str.split("""
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN
BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL
GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM
JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME
MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP
NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD
SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""))


def name_key(name: str) -> str:
    """The form in which two names are compared: NFKC, case-folded, spaces collapsed.

    >>> name_key("SPÖ") == name_key("spö") == name_key("SPO\\u0308")
    True
    >>> name_key("  Die  LINKE ")
    'die linke'
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split())


def loose_key(name: str) -> str:
    """The key without accents on Latin letters, spaces, punctuation or symbols.

    Marks stay on letters of other scripts, where they are part of the letter (Devanagari
    vowel signs, say).

    >>> loose_key("Parti-Socialiste ") == loose_key("parti socialiste") == "partisocialiste"
    True
    >>> loose_key("Frente Ámplio") == loose_key("Frente Amplio")
    True
    """
    kept = []
    for char in name_key(name):
        base = unicodedata.normalize("NFKD", char)
        if base[0].isascii() and base[0].isalnum():
            kept.append(base[0])
        elif unicodedata.category(char)[0] in "LMN":
            kept.append(char)
    return "".join(kept)


def country_code(text: str) -> str | None:
    """The ISO 3166-1 alpha-2 code, upper case, or None when it is not one.

    >>> country_code(" ke "), country_code("XX"), country_code("FRA")
    ('KE', None, None)
    """
    code = text.strip().upper()
    return code if code in COUNTRIES else None
