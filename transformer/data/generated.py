"""Synthetic English -> German-like parallel corpus: the generated, no-download task.

A fresh machine can train a translation Transformer on this corpus without downloading
anything. Every sentence is sampled as an explicit structure (clauses, noun phrases,
verbs) and then rendered twice, once per language, so the German side is a deterministic
function of the English side: each English word form belongs to exactly one lexeme and
gender, case and number follow from the structure alone. Translating still needs real
attention, because the German side has

* V2 order in main clauses, with inversion after a fronted time adverb or a fronted
  subordinate clause, and verb-final order in subordinate clauses (weil, wenn, obwohl, dass);
* separable verbs ("macht ... auf" in main clauses, "aufmacht" at the end of subordinate ones);
* the perfect tense and modal verbs, which send the participle or infinitive to the end;
* articles and adjective endings agreeing in gender, number and case (nominative subject,
  accusative or dative object, case governed by prepositions), dative plural nouns in -n,
  and the contractions vom, zum, zur;
* negation by "nicht" after the objects, or by "kein" in place of an indefinite object.

Tokens are separated by single spaces on both sides, punctuation included
("der Mann schläft ."), and neither side capitalises the first word; German nouns keep
their capital letter.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, NamedTuple, TypeVar

import numpy as np

__all__ = [
    "LEXICON",
    "Clause",
    "Conjunction",
    "NounPhrase",
    "PrepPhrase",
    "Sentence",
    "generate_pair",
    "generate_splits",
    "render_sentence",
]

MIN_SOURCE_TOKENS = 4
MAX_SOURCE_TOKENS = 24
MAX_TARGET_TOKENS = 30

Case = Literal["nom", "acc", "dat"]
Tense = Literal["present", "perfect", "can", "want"]

# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------

# Semantic kinds keep sentences plausible ("the woman reads the letter", never "the letter
# reads the soup"); they restrict what the sampler picks, not how anything is translated.
PERSON, ANIMAL, THING, TEXT, FOOD, DRINK = "person", "animal", "thing", "text", "food", "drink"
ANIMATE = frozenset({PERSON, ANIMAL})
PEOPLE = frozenset({PERSON})
OBJECTS = frozenset({THING, TEXT})
CONSUMABLES = frozenset({FOOD, DRINK})
CONCRETE = OBJECTS | CONSUMABLES
EVERYTHING = ANIMATE | CONCRETE
TEXTS, FOODS, DRINKS = frozenset({TEXT}), frozenset({FOOD}), frozenset({DRINK})


class Noun(NamedTuple):
    english: str
    english_plural: str
    german: str
    german_plural: str
    gender: Literal["m", "f", "n"]
    kind: str


class Adjective(NamedTuple):
    english: str
    german_stem: str  # the form every ending attaches to: "müd" + "e"
    kinds: frozenset[str]


class Verb(NamedTuple):
    english: str  # base form, possibly with a particle: "pick up"
    english_3sg: str
    english_participle: str
    german_3sg: str  # without the separable particle: "macht" for "aufmachen"
    german_3pl: str  # also the infinitive once the particle is prefixed
    german_participle: str  # with the particle: "aufgemacht"
    subjects: frozenset[str]
    objects: frozenset[str] = frozenset()  # empty for verbs without a noun object
    object_case: Case = "acc"
    particle: str = ""
    auxiliary: Literal["haben", "sein"] = "haben"
    motion: bool = False
    takes_clause: bool = False  # verbs of saying and knowing take a "dass" clause instead


class Adverb(NamedTuple):
    english: str
    german: str
    tenses: frozenset[str]  # "yesterday" only makes sense with the perfect


class Preposition(NamedTuple):
    english: str
    german: str
    case: Case
    motion_only: bool  # "to" and "from" need a verb of motion


class Conjunction(NamedTuple):
    english: str
    german: str
    subordinating: bool  # subordinating conjunctions send the verb to the end
    comma: bool


def _noun(english: str, german: str, gender: Literal["m", "f", "n"], kind: str) -> Noun:
    """Builds a noun from "singular/plural" pairs: _noun("man/men", "Mann/Männer", ...)."""
    en_sg, en_pl = english.split("/")
    de_sg, de_pl = german.split("/")
    return Noun(en_sg, en_pl, de_sg, de_pl, gender, kind)


def _verb(
    english: str,
    german: str,
    subjects: frozenset[str],
    objects: frozenset[str] = frozenset(),
    object_case: Case = "acc",
    *,
    motion: bool = False,
    takes_clause: bool = False,
) -> Verb:
    """Builds a verb from its principal parts, e.g.
    _verb("open|opens|opened", "macht auf|machen|hat aufgemacht", PEOPLE, OBJECTS)."""
    base, third_singular, participle = english.split("|")
    german_3sg, german_3pl, perfect = german.split("|")
    finite, _, particle = german_3sg.partition(" ")
    auxiliary, german_participle = perfect.split(" ")
    return Verb(
        base,
        third_singular,
        participle,
        finite,
        german_3pl,
        german_participle,
        subjects,
        objects,
        object_case,
        particle,
        "sein" if auxiliary == "ist" else "haben",
        motion,
        takes_clause,
    )


NOUNS: tuple[Noun, ...] = (
    _noun("man/men", "Mann/Männer", "m", PERSON),
    _noun("woman/women", "Frau/Frauen", "f", PERSON),
    _noun("child/children", "Kind/Kinder", "n", PERSON),
    _noun("girl/girls", "Mädchen/Mädchen", "n", PERSON),
    _noun("teacher/teachers", "Lehrer/Lehrer", "m", PERSON),
    _noun("doctor/doctors", "Arzt/Ärzte", "m", PERSON),
    _noun("friend/friends", "Freund/Freunde", "m", PERSON),
    _noun("sister/sisters", "Schwester/Schwestern", "f", PERSON),
    _noun("brother/brothers", "Bruder/Brüder", "m", PERSON),
    _noun("mother/mothers", "Mutter/Mütter", "f", PERSON),
    _noun("father/fathers", "Vater/Väter", "m", PERSON),
    _noun("king/kings", "König/Könige", "m", PERSON),
    _noun("queen/queens", "Königin/Königinnen", "f", PERSON),
    _noun("uncle/uncles", "Onkel/Onkel", "m", PERSON),
    _noun("aunt/aunts", "Tante/Tanten", "f", PERSON),
    _noun("dog/dogs", "Hund/Hunde", "m", ANIMAL),
    _noun("cat/cats", "Katze/Katzen", "f", ANIMAL),
    _noun("horse/horses", "Pferd/Pferde", "n", ANIMAL),
    _noun("bird/birds", "Vogel/Vögel", "m", ANIMAL),
    _noun("mouse/mice", "Maus/Mäuse", "f", ANIMAL),
    _noun("cow/cows", "Kuh/Kühe", "f", ANIMAL),
    _noun("pig/pigs", "Schwein/Schweine", "n", ANIMAL),
    _noun("duck/ducks", "Ente/Enten", "f", ANIMAL),
    _noun("wolf/wolves", "Wolf/Wölfe", "m", ANIMAL),
    _noun("rabbit/rabbits", "Kaninchen/Kaninchen", "n", ANIMAL),
    _noun("door/doors", "Tür/Türen", "f", THING),
    _noun("window/windows", "Fenster/Fenster", "n", THING),
    _noun("table/tables", "Tisch/Tische", "m", THING),
    _noun("chair/chairs", "Stuhl/Stühle", "m", THING),
    _noun("car/cars", "Auto/Autos", "n", THING),
    _noun("bag/bags", "Tasche/Taschen", "f", THING),
    _noun("box/boxes", "Kiste/Kisten", "f", THING),
    _noun("bottle/bottles", "Flasche/Flaschen", "f", THING),
    _noun("key/keys", "Schlüssel/Schlüssel", "m", THING),
    _noun("lamp/lamps", "Lampe/Lampen", "f", THING),
    _noun("ball/balls", "Ball/Bälle", "m", THING),
    _noun("picture/pictures", "Bild/Bilder", "n", THING),
    _noun("cup/cups", "Tasse/Tassen", "f", THING),
    _noun("house/houses", "Haus/Häuser", "n", THING),
    _noun("shoe/shoes", "Schuh/Schuhe", "m", THING),
    _noun("book/books", "Buch/Bücher", "n", TEXT),
    _noun("letter/letters", "Brief/Briefe", "m", TEXT),
    _noun("newspaper/newspapers", "Zeitung/Zeitungen", "f", TEXT),
    _noun("story/stories", "Geschichte/Geschichten", "f", TEXT),
    _noun("poem/poems", "Gedicht/Gedichte", "n", TEXT),
    _noun("apple/apples", "Apfel/Äpfel", "m", FOOD),
    _noun("bread/breads", "Brot/Brote", "n", FOOD),
    _noun("cake/cakes", "Kuchen/Kuchen", "m", FOOD),
    _noun("soup/soups", "Suppe/Suppen", "f", FOOD),
    _noun("egg/eggs", "Ei/Eier", "n", FOOD),
    _noun("banana/bananas", "Banane/Bananen", "f", FOOD),
    _noun("coffee/coffees", "Kaffee/Kaffees", "m", DRINK),
    _noun("tea/teas", "Tee/Tees", "m", DRINK),
    _noun("beer/beers", "Bier/Biere", "n", DRINK),
    _noun("juice/juices", "Saft/Säfte", "m", DRINK),
)

ADJECTIVES: tuple[Adjective, ...] = (
    Adjective("big", "groß", ANIMATE | OBJECTS),
    Adjective("small", "klein", ANIMATE | OBJECTS | frozenset({FOOD})),
    Adjective("old", "alt", ANIMATE | OBJECTS),
    Adjective("new", "neu", OBJECTS),
    Adjective("beautiful", "schön", EVERYTHING),
    Adjective("good", "gut", EVERYTHING),
    Adjective("red", "rot", frozenset({THING, FOOD})),
    Adjective("black", "schwarz", frozenset({ANIMAL, THING})),
    Adjective("white", "weiß", frozenset({ANIMAL, THING})),
    Adjective("young", "jung", ANIMATE),
    Adjective("happy", "glücklich", ANIMATE),
    Adjective("tired", "müd", ANIMATE),
    Adjective("friendly", "freundlich", ANIMATE),
    Adjective("clever", "klug", ANIMATE),
    Adjective("hungry", "hungrig", ANIMATE),
    Adjective("lazy", "faul", ANIMATE),
    Adjective("heavy", "schwer", OBJECTS),
    Adjective("empty", "leer", frozenset({THING})),
    Adjective("long", "lang", frozenset({TEXT})),
    Adjective("fresh", "frisch", CONSUMABLES),
    Adjective("hot", "heiß", CONSUMABLES),
    Adjective("cold", "kalt", CONSUMABLES),
    Adjective("sweet", "süß", CONSUMABLES),
)

# Principal parts as a dictionary lists them: English "base|3sg|participle", German
# "3sg|3pl|perfect" with the separable particle after the 3sg form ("macht auf").
VERBS: tuple[Verb, ...] = (
    # Accusative object.
    _verb("see|sees|seen", "sieht|sehen|hat gesehen", ANIMATE, EVERYTHING),
    _verb("find|finds|found", "findet|finden|hat gefunden", ANIMATE, EVERYTHING),
    _verb("buy|buys|bought", "kauft|kaufen|hat gekauft", PEOPLE, CONCRETE),
    _verb("read|reads|read", "liest|lesen|hat gelesen", PEOPLE, TEXTS),
    _verb("eat|eats|eaten", "isst|essen|hat gegessen", ANIMATE, FOODS),
    _verb("drink|drinks|drunk", "trinkt|trinken|hat getrunken", ANIMATE, DRINKS),
    _verb("like|likes|liked", "mag|mögen|hat gemocht", ANIMATE, EVERYTHING),
    _verb("visit|visits|visited", "besucht|besuchen|hat besucht", PEOPLE, PEOPLE),
    _verb("hear|hears|heard", "hört|hören|hat gehört", ANIMATE, ANIMATE),
    _verb("carry|carries|carried", "trägt|tragen|hat getragen", PEOPLE, CONCRETE),
    _verb("take|takes|taken", "nimmt|nehmen|hat genommen", PEOPLE, CONCRETE),
    _verb("meet|meets|met", "trifft|treffen|hat getroffen", PEOPLE, PEOPLE),
    _verb("cook|cooks|cooked", "kocht|kochen|hat gekocht", PEOPLE, FOODS),
    _verb("write|writes|written", "schreibt|schreiben|hat geschrieben", PEOPLE, TEXTS),
    _verb("bring|brings|brought", "bringt|bringen|hat gebracht", PEOPLE, CONCRETE),
    _verb("look for|looks for|looked for", "sucht|suchen|hat gesucht", ANIMATE, EVERYTHING),
    # Separable, accusative object.
    _verb("open|opens|opened", "macht auf|machen|hat aufgemacht", PEOPLE, OBJECTS),
    _verb("close|closes|closed", "macht zu|machen|hat zugemacht", PEOPLE, OBJECTS),
    _verb("call|calls|called", "ruft an|rufen|hat angerufen", PEOPLE, PEOPLE),
    _verb("invite|invites|invited", "lädt ein|laden|hat eingeladen", PEOPLE, PEOPLE),
    _verb("pick up|picks up|picked up", "hebt auf|heben|hat aufgehoben", PEOPLE, CONCRETE),
    _verb(
        "throw away|throws away|thrown away", "wirft weg|werfen|hat weggeworfen", PEOPLE, OBJECTS
    ),
    _verb("look at|looks at|looked at", "sieht an|sehen|hat angesehen", ANIMATE, EVERYTHING),
    # Dative object.
    _verb("help|helps|helped", "hilft|helfen|hat geholfen", PEOPLE, ANIMATE, "dat"),
    _verb("thank|thanks|thanked", "dankt|danken|hat gedankt", PEOPLE, PEOPLE, "dat"),
    _verb("follow|follows|followed", "folgt|folgen|ist gefolgt", ANIMATE, ANIMATE, "dat"),
    # No object.
    _verb("sleep|sleeps|slept", "schläft|schlafen|hat geschlafen", ANIMATE),
    _verb("laugh|laughs|laughed", "lacht|lachen|hat gelacht", PEOPLE),
    _verb("sing|sings|sung", "singt|singen|hat gesungen", PEOPLE),
    _verb("dance|dances|danced", "tanzt|tanzen|hat getanzt", PEOPLE),
    _verb("work|works|worked", "arbeitet|arbeiten|hat gearbeitet", PEOPLE),
    _verb("play|plays|played", "spielt|spielen|hat gespielt", ANIMATE),
    _verb("wait|waits|waited", "wartet|warten|hat gewartet", ANIMATE),
    _verb("stand up|stands up|stood up", "steht auf|stehen|ist aufgestanden", ANIMATE),
    _verb(
        "fall asleep|falls asleep|fallen asleep", "schläft ein|schlafen|ist eingeschlafen", ANIMATE
    ),
    _verb("go|goes|gone", "geht|gehen|ist gegangen", ANIMATE, motion=True),
    _verb("come|comes|come", "kommt|kommen|ist gekommen", ANIMATE, motion=True),
    _verb("run|runs|run", "läuft|laufen|ist gelaufen", ANIMATE, motion=True),
    _verb("arrive|arrives|arrived", "kommt an|kommen|ist angekommen", ANIMATE, motion=True),
    _verb(
        "come back|comes back|come back",
        "kommt zurück|kommen|ist zurückgekommen",
        ANIMATE,
        motion=True,
    ),
    # A "that" clause instead of an object.
    _verb("say|says|said", "sagt|sagen|hat gesagt", PEOPLE, takes_clause=True),
    _verb("know|knows|known", "weiß|wissen|hat gewusst", PEOPLE, takes_clause=True),
    _verb("hope|hopes|hoped", "hofft|hoffen|hat gehofft", PEOPLE, takes_clause=True),
)

_ALL_TENSES = frozenset({"present", "perfect", "can", "want"})
ADVERBS: tuple[Adverb, ...] = (
    Adverb("today", "heute", _ALL_TENSES),
    Adverb("now", "jetzt", frozenset({"present", "can", "want"})),
    Adverb("yesterday", "gestern", frozenset({"perfect"})),
    Adverb("sometimes", "manchmal", _ALL_TENSES),
    Adverb("in the morning", "morgens", _ALL_TENSES),
    Adverb("in the evening", "abends", _ALL_TENSES),
    Adverb("at night", "nachts", _ALL_TENSES),
)

PREPOSITIONS: tuple[Preposition, ...] = (
    Preposition("with", "mit", "dat", motion_only=False),
    Preposition("for", "für", "acc", motion_only=False),
    Preposition("without", "ohne", "acc", motion_only=False),
    Preposition("to", "zu", "dat", motion_only=True),
    Preposition("from", "von", "dat", motion_only=True),
)

CONJUNCTIONS: tuple[Conjunction, ...] = (
    Conjunction("because", "weil", subordinating=True, comma=True),
    Conjunction("when", "wenn", subordinating=True, comma=True),
    Conjunction("although", "obwohl", subordinating=True, comma=True),
    Conjunction("and", "und", subordinating=False, comma=False),
    Conjunction("but", "aber", subordinating=False, comma=True),
)


def _index(entries: Iterable[NamedTuple]) -> MappingProxyType:
    return MappingProxyType({entry.english: entry for entry in entries})  # type: ignore[attr-defined]


# Read-only lookup by English base form, so tests and tools can build sentences by hand.
LEXICON = MappingProxyType(
    {
        "noun": _index(NOUNS),
        "adjective": _index(ADJECTIVES),
        "verb": _index(VERBS),
        "adverb": _index(ADVERBS),
        "preposition": _index(PREPOSITIONS),
        "conjunction": _index(CONJUNCTIONS),
    }
)

# ---------------------------------------------------------------------------------------------
# Sentence structure
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NounPhrase:
    noun: Noun
    plural: bool = False
    definite: bool = True  # indefinite plural is a bare plural: "dogs", "Hunde"
    adjective: Adjective | None = None


@dataclass(frozen=True, slots=True)
class PrepPhrase:
    preposition: Preposition
    object: NounPhrase


@dataclass(frozen=True, slots=True)
class Clause:
    subject: NounPhrase
    verb: Verb
    tense: Tense = "present"
    negated: bool = False
    object: NounPhrase | None = None
    pp: PrepPhrase | None = None
    adverb: Adverb | None = None
    adverb_fronted: bool = False  # only honoured in main clauses
    complement: Clause | None = None  # the "that" clause of a verb that takes_clause


@dataclass(frozen=True, slots=True)
class Sentence:
    main: Clause
    second: Clause | None = None
    conjunction: Conjunction | None = None
    second_first: bool = False  # a subordinate clause placed before the main clause


# ---------------------------------------------------------------------------------------------
# English rendering
# ---------------------------------------------------------------------------------------------


def _english_noun_phrase(phrase: NounPhrase) -> list[str]:
    noun = phrase.noun.english_plural if phrase.plural else phrase.noun.english
    words = [phrase.adjective.english, noun] if phrase.adjective else [noun]
    if phrase.definite:
        return ["the", *words]
    if phrase.plural:
        return words
    return ["an" if words[0][0] in "aeiou" else "a", *words]


def _english_verb_group(clause: Clause) -> list[str]:
    verb, singular, negated = clause.verb, not clause.subject.plural, clause.negated
    if clause.tense == "perfect":
        return [
            "has" if singular else "have",
            *(["not"] if negated else []),
            verb.english_participle,
        ]
    if clause.tense == "can":
        return ["cannot" if negated else "can", verb.english]
    do_support = ["does" if singular else "do", "not"] if negated else []
    if clause.tense == "want":
        return [*do_support, "wants" if singular and not negated else "want", "to", verb.english]
    if negated:
        return [*do_support, verb.english]
    return [verb.english_3sg if singular else verb.english]


def _english_clause(clause: Clause, *, main: bool) -> list[str]:
    fronted = main and clause.adverb_fronted and clause.adverb is not None
    words = [clause.adverb.english] if fronted else []  # type: ignore[union-attr]
    words += _english_noun_phrase(clause.subject) + _english_verb_group(clause)
    if clause.object:
        words += _english_noun_phrase(clause.object)
    if clause.pp:
        words += [clause.pp.preposition.english, *_english_noun_phrase(clause.pp.object)]
    if clause.adverb and not fronted:
        words.append(clause.adverb.english)
    if clause.complement:
        words += ["that", *_english_clause(clause.complement, main=False)]
    return words


# ---------------------------------------------------------------------------------------------
# German rendering
# ---------------------------------------------------------------------------------------------

_DEFINITE_ARTICLE = MappingProxyType(
    {
        ("m", "nom"): "der", ("m", "acc"): "den", ("m", "dat"): "dem",
        ("f", "nom"): "die", ("f", "acc"): "die", ("f", "dat"): "der",
        ("n", "nom"): "das", ("n", "acc"): "das", ("n", "dat"): "dem",
        ("pl", "nom"): "die", ("pl", "acc"): "die", ("pl", "dat"): "den",
    }
)  # fmt: skip

# The "strong" endings carry gender and case. Adjectives take them when no article shows them
# (none at all, or an ending-less "ein"/"kein"), and the weak endings otherwise.
_STRONG_ENDING = MappingProxyType(
    {
        ("m", "nom"): "er", ("m", "acc"): "en", ("m", "dat"): "em",
        ("f", "nom"): "e", ("f", "acc"): "e", ("f", "dat"): "er",
        ("n", "nom"): "es", ("n", "acc"): "es", ("n", "dat"): "em",
        ("pl", "nom"): "e", ("pl", "acc"): "e", ("pl", "dat"): "en",
    }
)  # fmt: skip
_WEAK_ENDING = MappingProxyType(
    {
        ("m", "nom"): "e", ("m", "acc"): "en", ("m", "dat"): "en",
        ("f", "nom"): "e", ("f", "acc"): "e", ("f", "dat"): "en",
        ("n", "nom"): "e", ("n", "acc"): "e", ("n", "dat"): "en",
        ("pl", "nom"): "en", ("pl", "acc"): "en", ("pl", "dat"): "en",
    }
)  # fmt: skip
_ENDINGLESS_EIN = frozenset({("m", "nom"), ("n", "nom"), ("n", "acc")})

_CONTRACTIONS = MappingProxyType(
    {("von", "dem"): "vom", ("zu", "dem"): "zum", ("zu", "der"): "zur"}
)

_AUXILIARY = MappingProxyType(
    {
        ("haben", True): "hat",
        ("haben", False): "haben",
        ("sein", True): "ist",
        ("sein", False): "sind",
    }
)
_MODAL = MappingProxyType(
    {
        ("can", True): "kann",
        ("can", False): "können",
        ("want", True): "will",
        ("want", False): "wollen",
    }
)


def _german_noun_phrase(phrase: NounPhrase, case: Case, *, negative: bool = False) -> list[str]:
    """Declines a noun phrase; `negative` turns an indefinite one into "kein ..."."""
    slot = ("pl" if phrase.plural else phrase.noun.gender, case)
    if phrase.definite:
        article: str | None = _DEFINITE_ARTICLE[slot]
    elif negative or not phrase.plural:
        stem = "kein" if negative else "ein"
        article = stem if slot in _ENDINGLESS_EIN else stem + _STRONG_ENDING[slot]
    else:
        article = None
    words = [article] if article else []
    if phrase.adjective:
        shows_case = article is not None and article not in ("ein", "kein")
        ending = _WEAK_ENDING[slot] if shows_case else _STRONG_ENDING[slot]
        words.append(phrase.adjective.german_stem + ending)
    if not phrase.plural:
        words.append(phrase.noun.german)
    elif case == "dat" and phrase.noun.german_plural[-1] not in "ns":
        words.append(phrase.noun.german_plural + "n")
    else:
        words.append(phrase.noun.german_plural)
    return words


def _german_prep_phrase(pp: PrepPhrase) -> list[str]:
    first, *rest = _german_noun_phrase(pp.object, pp.preposition.case)
    contracted = _CONTRACTIONS.get((pp.preposition.german, first))
    return [contracted, *rest] if contracted else [pp.preposition.german, first, *rest]


def _german_verb_parts(clause: Clause) -> tuple[str, str, list[str]]:
    """Splits the verb into (finite verb, separable particle, non-finite verbs)."""
    verb, singular = clause.verb, not clause.subject.plural
    if clause.tense == "perfect":
        return _AUXILIARY[verb.auxiliary, singular], "", [verb.german_participle]
    if clause.tense in ("can", "want"):
        return _MODAL[clause.tense, singular], "", [verb.particle + verb.german_3pl]
    return (verb.german_3sg if singular else verb.german_3pl), verb.particle, []


def _german_clause(clause: Clause, order: Literal["v2", "v1", "final"]) -> list[str]:
    """Renders a clause as a main clause ("v2"), a main clause after a fronted subordinate
    clause ("v1") or a subordinate clause ("final")."""
    finite, particle, nonfinite = _german_verb_parts(clause)
    fronted_adverb = order == "v2" and clause.adverb_fronted and clause.adverb is not None

    # The middle field: time adverb, object, negation, then the prepositional phrase, which
    # is where "nicht" stands before manner and direction phrases.
    middle = [clause.adverb.german] if clause.adverb and not fronted_adverb else []
    uses_kein = clause.negated and clause.object is not None and not clause.object.definite
    if clause.object:
        case = clause.verb.object_case
        middle += _german_noun_phrase(clause.object, case, negative=uses_kein)
    if clause.negated and not uses_kein:
        middle.append("nicht")
    if clause.pp:
        middle += _german_prep_phrase(clause.pp)

    subject = _german_noun_phrase(clause.subject, "nom")
    if order == "final":
        words = subject + middle + nonfinite + [particle + finite]
    else:
        tail = nonfinite + ([particle] if particle else [])
        if order == "v1":
            words = [finite, *subject, *middle, *tail]
        elif fronted_adverb:
            words = [clause.adverb.german, finite, *subject, *middle, *tail]  # type: ignore[union-attr]
        else:
            words = [*subject, finite, *middle, *tail]
    if clause.complement:
        words += [",", "dass", *_german_clause(clause.complement, "final")]
    return words


def render_sentence(sentence: Sentence) -> tuple[str, str]:
    """Renders a sentence structure as an (english, german) pair of space-separated tokens."""
    english = _english_clause(sentence.main, main=True)
    german = _german_clause(sentence.main, "v2")
    conjunction, second = sentence.conjunction, sentence.second
    if conjunction is not None and second is not None:
        comma = [","] if conjunction.comma else []
        if not conjunction.subordinating:
            english += [*comma, conjunction.english, *_english_clause(second, main=True)]
            german += [*comma, conjunction.german, *_german_clause(second, "v2")]
        elif sentence.second_first:
            # The fronted subordinate clause fills the first position, so the verb comes next.
            english = [conjunction.english, *_english_clause(second, main=False), ",", *english]
            german = [
                conjunction.german,
                *_german_clause(second, "final"),
                ",",
                *_german_clause(sentence.main, "v1"),
            ]
        else:
            english += [*comma, conjunction.english, *_english_clause(second, main=False)]
            german += [*comma, conjunction.german, *_german_clause(second, "final")]
    return " ".join([*english, "."]), " ".join([*german, "."])


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

T = TypeVar("T")


class _Sampler:
    """Uniform draws from a numpy Generator, fetched in blocks: one Generator call per draw
    would cost more than building and rendering the whole sentence."""

    def __init__(self, rng: np.random.Generator, block_size: int) -> None:
        self._rng = rng
        self._block_size = block_size
        self._draws: Iterator[float] = iter(())

    def uniform(self) -> float:
        try:
            return next(self._draws)
        except StopIteration:
            self._draws = iter(self._rng.random(self._block_size).tolist())
            return next(self._draws)

    def chance(self, probability: float) -> bool:
        return self.uniform() < probability

    def choice(self, items: Sequence[T]) -> T:
        return items[int(self.uniform() * len(items))]


class _Style(NamedTuple):
    """How richly a clause is decorated; multi-clause sentences are kept plainer."""

    adjective: float
    pp: float
    adverb: float
    negation: float


_SIMPLE_STYLE = _Style(adjective=0.3, pp=0.35, adverb=0.35, negation=0.25)
_COMPLEX_STYLE = _Style(adjective=0.15, pp=0.12, adverb=0.15, negation=0.15)

# Repetition in these tuples sets the sampling weights.
_TENSES: tuple[Tense, ...] = ("present",) * 5 + ("perfect",) * 3 + ("can", "want")
_REPORTING_TENSES: tuple[Tense, ...] = ("present",) * 3 + ("perfect",) * 2  # "can know" is odd
_CLAUSE_VERBS = tuple(verb for verb in VERBS if verb.takes_clause)
_PLAIN_VERBS = tuple(verb for verb in VERBS if not verb.takes_clause)
_SUBORDINATORS = tuple(c for c in CONJUNCTIONS if c.subordinating)
_COORDINATORS = tuple(c for c in CONJUNCTIONS if not c.subordinating)
_PP_KINDS = ANIMATE | {THING}

# Candidate lists are filtered once here, because filtering per draw would dominate the cost.
_NOUNS_BY_KINDS = MappingProxyType(
    {
        kinds: tuple(noun for noun in NOUNS if noun.kind in kinds)
        for kinds in {_PP_KINDS} | {v.subjects for v in VERBS} | {v.objects for v in VERBS}
    }
)
_ADJECTIVES_BY_KIND = MappingProxyType(
    {noun.kind: tuple(a for a in ADJECTIVES if noun.kind in a.kinds) for noun in NOUNS}
)
_ADVERBS_BY_TENSE = MappingProxyType(
    {tense: tuple(a for a in ADVERBS if tense in a.tenses) for tense in _ALL_TENSES}
)
_PREPOSITIONS_FOR = MappingProxyType(
    {
        motion: tuple(p for p in PREPOSITIONS if motion or not p.motion_only)
        for motion in (False, True)
    }
)


def _sample_noun_phrase(
    s: _Sampler, kinds: frozenset[str], style: _Style, used: tuple[Noun, ...] = ()
) -> NounPhrase:
    """Samples a noun phrase whose noun is not in `used` ("the man sees the man" is odd)."""
    candidates = _NOUNS_BY_KINDS[kinds]
    noun = s.choice(candidates)
    while noun in used:
        noun = s.choice(candidates)
    adjective = s.choice(_ADJECTIVES_BY_KIND[noun.kind]) if s.chance(style.adjective) else None
    return NounPhrase(noun, plural=s.chance(0.35), definite=s.chance(0.7), adjective=adjective)


def _sample_clause(
    s: _Sampler, verb: Verb, style: _Style, *, main: bool, complement: Clause | None = None
) -> Clause:
    tense = s.choice(_REPORTING_TENSES if verb.takes_clause else _TENSES)
    subject = _sample_noun_phrase(s, verb.subjects, style)
    used = (subject.noun,)
    obj = None
    if verb.objects:
        obj = _sample_noun_phrase(s, verb.objects, style, used)
        used += (obj.noun,)
    pp = None
    if complement is None and s.chance(style.pp):
        preposition = s.choice(_PREPOSITIONS_FOR[verb.motion])
        pp = PrepPhrase(preposition, _sample_noun_phrase(s, _PP_KINDS, style, used))
    adverb = s.choice(_ADVERBS_BY_TENSE[tense]) if s.chance(style.adverb) else None
    # A clause-final adverb would land after the "that" clause, so such clauses front it.
    fronted = main and (complement is not None or s.chance(0.6))
    return Clause(
        subject,
        verb,
        tense=tense,
        negated=s.chance(style.negation),
        object=obj,
        pp=pp,
        adverb=adverb,
        adverb_fronted=fronted and adverb is not None,
        complement=complement,
    )


def _sample_sentence(s: _Sampler) -> Sentence:
    """45% one clause, 20% with a "dass" clause, 20% with an adverbial subordinate clause
    (a third of them fronted) and 15% two coordinated main clauses."""
    shape = s.uniform()
    if shape < 0.45:
        return Sentence(_sample_clause(s, s.choice(_PLAIN_VERBS), _SIMPLE_STYLE, main=True))
    style = _COMPLEX_STYLE
    if shape < 0.65:
        complement = _sample_clause(s, s.choice(_PLAIN_VERBS), style, main=False)
        verb = s.choice(_CLAUSE_VERBS)
        return Sentence(_sample_clause(s, verb, style, main=True, complement=complement))
    main = _sample_clause(s, s.choice(_PLAIN_VERBS), style, main=True)
    if shape < 0.85:
        second = _sample_clause(s, s.choice(_PLAIN_VERBS), style, main=False)
        return Sentence(main, second, s.choice(_SUBORDINATORS), second_first=s.chance(1 / 3))
    second = _sample_clause(s, s.choice(_PLAIN_VERBS), style, main=True)
    return Sentence(main, second, s.choice(_COORDINATORS))


def _sample_pair(s: _Sampler) -> tuple[str, str]:
    # Rejection keeps both sides within the length limits without special-casing the grammar.
    while True:
        english, german = render_sentence(_sample_sentence(s))
        source_length = english.count(" ") + 1
        if (
            MIN_SOURCE_TOKENS <= source_length <= MAX_SOURCE_TOKENS
            and german.count(" ") + 1 <= MAX_TARGET_TOKENS
        ):
            return english, german


def generate_pair(rng: np.random.Generator) -> tuple[str, str]:
    """Samples one (english, german) sentence pair, deterministically for a given rng state.

    Draws are taken from `rng` in small blocks, so each call advances it by a multiple of 64.
    """
    return _sample_pair(_Sampler(rng, block_size=64))


def generate_splits(
    seed: int, num_train: int, num_validation: int, num_test: int
) -> dict[str, list[tuple[str, str]]]:
    """Returns {"train": [...], "validation": [...], "test": [...]} of (english, german) pairs.

    Deterministic for a given seed; validation and test sources never appear in train (and not
    in each other). Raises ValueError if the grammar cannot supply that many distinct sources.
    """
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    if any(size < 0 for size in sizes.values()):
        raise ValueError(f"split sizes must be non-negative, got {sizes}")
    total = sum(sizes.values())
    rng = np.random.default_rng(seed)
    sampler = _Sampler(rng, block_size=4096)
    pairs: dict[str, str] = {}
    max_draws = 10 * total + 1000
    draws = 0
    while len(pairs) < total:
        if draws == max_draws:
            raise ValueError(
                f"the grammar produced only {len(pairs)} distinct sentences in "
                f"{draws} draws, fewer than the {total} requested"
            )
        english, german = _sample_pair(sampler)
        pairs.setdefault(english, german)
        draws += 1
    # Shuffled before splitting: early draws are biased towards short, common sentences,
    # since later duplicates of those are dropped.
    unique = list(pairs.items())
    order = rng.permutation(total)
    splits: dict[str, list[tuple[str, str]]] = {}
    start = 0
    for name, size in sizes.items():
        splits[name] = [unique[i] for i in order[start : start + size]]
        start += size
    return splits
