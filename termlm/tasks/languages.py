"""Language names and codes for ``translate --to/--from``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from termlm.errors import UsageError

LANGUAGES = {
    "ar": "Arabic", "bg": "Bulgarian", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian",
    "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi",
    "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak",
    "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "th": "Thai", "tr": "Turkish",
    "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}
LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class Language:
    name: str  # what the prompt says: "French"
    code: str  # what file names get: "fr"

    @property
    def base(self) -> str:
        """The code without its region: ``pt`` for ``pt-BR``."""
        return self.code.split("-")[0]


def language(arg: str) -> Language:
    """``fr``, ``French``, ``pt-BR`` or any other language name."""
    text = " ".join(arg.split())
    if not text or len(text) > 40 or not LETTER.match(text) or not re.fullmatch(r"[\w ()-]+",
                                                                                text):
        raise UsageError(f"not a language: {arg!r}", hint="for example --to fr or --to French")
    low = text.lower().replace("_", "-")
    code = re.fullmatch(r"([a-z]{2,3})(?:-([a-z0-9]{2,8}))?", low)
    if code and code.group(1) in LANGUAGES:
        region = code.group(2)
        name = LANGUAGES[code.group(1)] + (f" ({region.upper()})" if region else "")
        return Language(name, code.group(1) + (f"-{region.upper()}" if region else ""))
    for short, name in LANGUAGES.items():
        if name.lower() == low:
            return Language(name, short)
    return Language(text, re.sub(r"[^a-z0-9]+", "-", low).strip("-"))


def name_of(code: str) -> str:
    """``English`` for ``en``; a code we have no name for stays a code."""
    return LANGUAGES.get(code, code)
