"""Heuristic scene fields in English and Russian: actors, setting, time cues, markers, motifs.

Cheap regexes over one scene's text; what they miss the `llm` sceneformer or a person's overrides
fill in. Nothing here knows about spans, documents or models.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

_CAPITALISED = re.compile(r"\b[A-ZА-ЯЁ][a-zа-яё]+(?:[-'’][A-ZА-ЯЁa-zа-яё]+)?\b")
_WORD = re.compile(r"[a-zа-яё]{5,}", re.IGNORECASE)
_CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
_LATIN = re.compile(r"[a-z]", re.IGNORECASE)

# Capitalised words that are not actors: function words that open sentences, months, days.
_NOT_ACTORS = frozenset("""
a an the this that these those there then than when where while what which who whom whose why how
if but and or so yet for nor as at by in into on onto of off out over under up down with without
from to he she it they we you i his her its their our your my me him them us is was were be been
are am do did does done have has had not no yes all any each every some one two three many much
more most such step press set use check install before after because since once every suppose
assume given consider either both neither like beyond at first next finally also even still only
chapter part book act prologue epilogue title monday tuesday wednesday thursday friday saturday sunday
january february march april may june july august september october november december god oh ah
он она оно они мы вы я ты его её ее их наш ваш мой твой это этот эта эти тот та те там тут здесь
тогда когда где как что кто почему зачем если но и или а да нет не ни все всё каждый каждая
сначала затем потом после перед чтобы поскольку так также ещё еще уже только даже шаг нажмите
установите проверяйте используйте допустим предположим либо оба из в во на у к с со о об от до
по за под над при для без глава часть книга пролог эпилог однажды вдруг вот ну ах ох бог
понедельник вторник среда четверг пятница суббота воскресенье
""".split())

_STOPWORDS = _NOT_ACTORS | frozenset("""
about above again against because being below between could during further having itself
myself other ought should their theirs themselves there these those through until which while
would where whose after before under after every never always something nothing
которые который которая которое потому чтобы когда тогда будет будут этого этой этому своей
своего своих себя между через после перед очень может можно нужно было были была быть
""".split())

_TIME_EN = re.compile(
    r"\b(?:at (?:dawn|dusk|noon|midnight|night|sunrise|sunset)|after midnight|before dawn"
    r"|(?:this|that|the next|every|one) (?:morning|evening|night|day|afternoon|winter|summer"
    r"|spring|autumn)|yesterday|today|tomorrow|tonight|(?:on )?(?:monday|tuesday|wednesday"
    r"|thursday|friday|saturday|sunday)|in (?:the )?(?:late |early )?(?:spring|summer|autumn|fall"
    r"|winter)(?: of \d{3,4})?|in \d{3,4}|\d{1,2}:\d{2}|(?:\d+|a few|two|three) (?:days|years"
    r"|hours|weeks) (?:later|ago))\b",
    re.IGNORECASE,
)
_TIME_RU = re.compile(
    r"(?<![а-яё])(?:на рассвете|на закате|в полдень|в полночь|после полуночи|утром|вечером"
    r"|ночью|днём|днем|вчера|сегодня|завтра|зимой|летом|весной|осенью|поздней осенью"
    r"|ранней весной|в тот вечер|в то утро|на следующее утро|на следующий день"
    r"|в (?:понедельник|вторник|среду|четверг|пятницу|субботу|воскресенье)"
    r"|(?:в )?\d{3,4} год[ау]?|\d{1,2}:\d{2}|через (?:\w+ )?(?:дней|дня|лет|года|часов|недель))"
    r"(?![а-яё])",
    re.IGNORECASE,
)
_SETTING_EN = re.compile(
    r"\b(?:[Ii]n|[Aa]t|[Oo]n|[Ii]nside|[Nn]ear|[Bb]y|[Uu]nder|[Bb]eside|[Aa]cross|[Oo]ver|[Ii]nto"
    r"|[Tt]hrough|[Tt]o) (?:the|a|an|his|her|their|our|my) (?:[a-z]+ )?[a-z]+\b"
)
_SETTING_RU = re.compile(
    r"(?<![А-Яа-яЁё])(?:[Вв]о?|[Нн]а|[Уу]|[Вв]озле|[Оо]коло|[Пп]од|[Нн]ад|[Пп]ри) [а-яё]{3,}"
    r"(?: [а-яё]{3,})?(?![А-Яа-яЁё])"
)
DEFAULT_MARKERS: tuple[str, ...] = ("∴", "∵", "→", "⇒", "⊕", "※", "§", "¶", "✦", "⟲")
MAX_ACTORS = 5
MAX_MOTIFS = 5


def language(text: str) -> str:
    """"ru" when Cyrillic letters outnumber Latin ones, else "en"."""
    sample = text[:4000]
    return "ru" if len(_CYRILLIC.findall(sample)) > len(_LATIN.findall(sample)) else "en"


def actors(text: str) -> list[str]:
    """Capitalised names that are not function words, most frequent first."""
    names = (w.removesuffix("'s").removesuffix("’s") for w in _CAPITALISED.findall(text))
    counts = Counter(w for w in names if w.lower() not in _NOT_ACTORS)
    return [word for word, _ in counts.most_common(MAX_ACTORS)]


def time_cues(text: str, lang: str) -> list[str]:
    """Time expressions ("at dawn", "на рассвете", "in 1921"), in order, without repeats."""
    pattern = _TIME_RU if lang == "ru" else _TIME_EN
    return _unique(m.group(0) for m in pattern.finditer(text))[:5]


def setting(text: str, lang: str, times: Sequence[str] = ()) -> str | None:
    """The first place phrase ("in the old library", "на берегу реки") that is not a time cue."""
    pattern = _SETTING_RU if lang == "ru" else _SETTING_EN
    lowered_times = {t.lower() for t in times}
    for match in pattern.finditer(text):
        phrase = match.group(0)
        words = phrase.split()
        while len(words) > 2 and words[-1].lower() in _STOPWORDS:
            words.pop()  # "in the harbour at" -> "in the harbour"
        phrase = " ".join(words)
        if phrase.lower() in lowered_times or _TIME_RU.fullmatch(phrase) or _TIME_EN.fullmatch(
                phrase):
            continue
        return phrase
    return None


def markers(text: str, symbols: Sequence[str]) -> list[str]:
    """The profile's marker symbols present in the text, in the profile's order."""
    return [symbol for symbol in symbols if symbol in text]


def motifs(text: str) -> list[str]:
    """Content words repeated within the scene: candidates for `echo` links between scenes."""
    counts = Counter(w.lower() for w in _WORD.findall(text))
    repeated = [(w, c) for w, c in counts.items() if c >= 2 and w not in _STOPWORDS]
    repeated.sort(key=lambda item: (-item[1], item[0]))
    return [word for word, _ in repeated[:MAX_MOTIFS]]


def echo_words(text: str) -> list[str]:
    """Distinct content words of six letters or more, in order of first appearance."""
    words: dict[str, None] = {}
    for match in _WORD.finditer(text):
        word = match.group(0).lower()
        if len(word) >= 6 and word not in _STOPWORDS:
            words.setdefault(word, None)
    return list(words)


def rule_fields(text: str, symbols: Sequence[str] = DEFAULT_MARKERS) -> tuple[dict, list[str]]:
    """All heuristic fields of one scene.

    Args:
        text: the scene's text.
        symbols: the profile's marker symbols.

    Returns:
        `(fields, markers)`: fields hold lang, actors, setting, time and motifs.
    """
    lang = language(text)
    times = time_cues(text, lang)
    fields = {
        "lang": lang,
        "actors": actors(text),
        "setting": setting(text, lang, times),
        "time": times,
        "motifs": motifs(text),
    }
    return fields, markers(text, symbols)


def _unique(items) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)
