"""Instruction rewrites for the language dimension: deterministic by seed, object nouns kept.

``rewrite(text, kind, level, seed, nouns)`` with ``kind`` one of:

- ``synonym``: replace ``level`` verb/preposition phrases by synonyms from :data:`SYNONYMS`;
- ``paraphrase``: wrap in a template, more indirect with level (:data:`TEMPLATES`), plus synonyms
  at levels ≥ 3 (1, 2, all);
- ``reorder``: ``level`` moves — swap the first two clauses ("B, after you A") and front the (new)
  first clause's prepositional phrase (at most two moves: levels ≥ 2 are the same);
- ``distractor``: add ``level`` clauses from :data:`DISTRACTORS` (none names a task object);
- ``typo``: ``level`` typos (adjacent swap, drop, double, keyboard neighbour) in words that are not
  protected.

Protected words (never changed, never dropped): the object nouns and colours found in the text
(:func:`object_nouns`) plus ``left``/``right``/``both`` — the task's meaning stays the same.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

OBJECT_NOUNS = frozenset("""
cube cubes block blocks box boxes peg pegs socket sockets hole cup cups mug mugs bowl bowls plate plates bottle
bottles ball balls towel cloth shoe shoes marker pen battery tape screwdriver sponge container bin basket drawer lid
spoon fork knife banana apple orange can cans jar tray bag object objects item items toy tube pot pan kettle
book books rack shelf table beam beams rod rods bar bars stick handle cap cloth lego brick bricks
""".split())
COLOURS = frozenset("red green blue yellow orange purple pink black white grey gray brown".split())
SIDES = frozenset({"left", "right", "both"})

#: phrase → alternatives (lower case; matched on word boundaries, longest first)
SYNONYMS: dict[str, list[str]] = {
    "pick up": ["grab", "lift", "take"],
    "transfer": ["hand", "pass", "move"],
    "insert": ["put", "slide", "push", "fit"],
    "place": ["put", "set", "position"],
    "put": ["place", "set"],
    "move": ["shift", "bring"],
    "grab": ["grasp", "take hold of"],
    "grasp": ["grab", "seize"],
    "lift": ["raise", "pick up"],
    "take": ["grab", "get"],
    "hand over": ["pass", "transfer"],
    "into": ["inside", "in"],
    "onto": ["on top of", "on"],
    "with": ["using"],
    "using": ["with"],
    "then": ["and then", "after that"],
    "arm": ["manipulator", "robot arm"],
    "arms": ["manipulators", "robot arms"],
    "gripper": ["hand", "end effector"],
    "other": ["second", "opposite"],
    "hold": ["keep"],
    "release": ["let go of", "drop"],
    "push": ["shove", "press"],
    "open": ["pull open"],
    "close": ["shut"],
}

TEMPLATES: dict[int, list[str]] = {
    1: ["Please {x}.", "{X}, please."],
    2: ["Could you {x}?", "I need you to {x}.", "Can you {x}?"],
    3: ["Your task is to {x}.", "What you should do is {x}.", "The job: {x}."],
    4: ["Here is what I want: {x}. Go ahead.", "Robot, your goal for this episode is to {x}.",
        "Next step in the plan: {x}. Thank you."],
    5: ["Without further ado, what I would really like the robot to do now is {x}, if that is okay.",
        "Listen carefully: the only thing that matters in this episode is that you {x}. Nothing else.",
        "Okay, so, the instruction is basically this: {x}, and please take your time."],
}

DISTRACTORS = [
    "the table is made of wood",
    "ignore the noise in the background",
    "the lights in the lab are on",
    "do not worry about the time",
    "the weather outside is cloudy",
    "someone may walk past the robot",
    "the camera might be a little dirty",
    "keep a steady pace",
    "the floor was cleaned this morning",
    "there is music playing in the room",
]

PREPOSITIONS = ("with", "using", "into", "onto", "to", "from", "on", "in", "inside", "toward", "towards")
_KEYBOARD = {c: n for row in ("qwertyuiop", "asdfghjkl", "zxcvbnm") for i, c in enumerate(row)
             for n in [row[max(0, i - 1)] + row[min(len(row) - 1, i + 1)]]}
_WORD = re.compile(r"[A-Za-z]+")


def object_nouns(text: str) -> list[str]:
    """The object nouns and colour words of ``text`` (lower case, in order, unique)."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        if (w in OBJECT_NOUNS or w in COLOURS) and w not in out:
            out.append(w)
    return out


def _protected(text: str, nouns: Iterable[str]) -> set[str]:
    return set(object_nouns(text)) | {n.lower() for n in nouns} | SIDES


def _core(text: str) -> str:
    """The instruction without trailing punctuation, first letter lower-cased (for templates)."""
    t = text.strip().rstrip(".!?").strip()
    if len(t) > 1 and t[0].isupper() and not t[:2].isupper():
        t = t[0].lower() + t[1:]
    return t


def _cap(t: str) -> str:
    return t[:1].upper() + t[1:] if t else t


def _finish(t: str, original: str) -> str:
    t = re.sub(r"\s+", " ", t).strip()
    t = re.sub(r"\s+([,.?!])", r"\1", t)
    if t and t[-1] not in ".?!":
        t += "." if original.strip().endswith(".") or not original.strip() else original.strip()[-1]
    return _cap(t)


def synonym(text: str, n: int, rng: np.random.Generator, protected: set[str]) -> str:
    """Replace up to ``n`` distinct phrases found in :data:`SYNONYMS`."""
    low = text.lower()
    spans = []
    taken = np.zeros(len(text) + 1, bool)
    for phrase in sorted(SYNONYMS, key=len, reverse=True):
        if phrase in protected:
            continue
        for m in re.finditer(rf"\b{re.escape(phrase)}\b", low):
            if not taken[m.start():m.end()].any():
                taken[m.start():m.end()] = True
                spans.append((m.start(), m.end(), phrase))
    if not spans:
        return text
    spans.sort()
    chosen = sorted(rng.choice(len(spans), size=min(n, len(spans)), replace=False).tolist())
    out, last = [], 0
    for k in chosen:
        s, e, phrase = spans[k]
        alts = SYNONYMS[phrase]
        alt = alts[int(rng.integers(0, len(alts)))]
        if text[s:e][:1].isupper():
            alt = _cap(alt)
        out += [text[last:s], alt]
        last = e
    out.append(text[last:])
    return "".join(out)


def paraphrase(text: str, level: int, rng: np.random.Generator, protected: set[str]) -> str:
    core = _core(text)
    if level >= 3:
        core = synonym(core, {3: 1, 4: 2}.get(level, 99), rng, protected)
    tpl = TEMPLATES[level][int(rng.integers(0, len(TEMPLATES[level])))]
    return _cap(tpl.replace("{X}", _cap(core)).replace("{x}", core))


def _clauses(core: str) -> tuple[list[str], list[str]]:
    """Split on clause joints: returns (clauses, joints between them)."""
    parts = re.split(r"(,\s*and then\s+|,\s*then\s+|\s+and then\s+|\s+then\s+|,\s*and\s+|\s+and\s+|;\s*|,\s*)", core)
    clauses = [p.strip() for p in parts[0::2]]
    joints = [j for j in parts[1::2]]
    return [c for c in clauses if c], joints


def _front_phrase(clause: str) -> str | None:
    """'pick up the cube with the left arm' → 'with the left arm, pick up the cube' (None if nothing to move)."""
    toks = clause.split()
    for p in range(1, len(toks)):
        if toks[p].lower() in PREPOSITIONS:
            end = len(toks)
            for q in range(p + 1, len(toks)):
                if toks[q].lower() in PREPOSITIONS:
                    end = q
                    break
            phrase, rest = toks[p:end], toks[:p] + toks[end:]
            if len(phrase) < 2 or not rest:
                return None
            return " ".join(phrase) + ", " + " ".join(rest)
    return None


def reorder(text: str, level: int, rng: np.random.Generator) -> str:
    """``level`` moves (a short instruction saturates early): swap the first two clauses ("B, after
    you A") and front the (new) first clause's prepositional phrase; which comes first at level 1
    is drawn from ``rng``."""
    clauses, joints = _clauses(_core(text))
    if not clauses:
        return text
    first, rest = clauses[0], clauses[1:]
    moves = []
    if _front_phrase(first) or (rest and _front_phrase(rest[0])):
        moves.append("front")
    if rest:
        moves.append("swap")
    if len(moves) == 2 and rng.random() < 0.5:
        moves.reverse()
    done = moves[:level]
    if done == ["front"] and not _front_phrase(first):  # only the second clause has a phrase: swap too
        done = ["swap", "front"]
    if "swap" in done:
        if "front" in done:
            rest[0] = _front_phrase(rest[0]) or rest[0]
        return f"{', '.join(rest)}, after you {first}"
    if "front" in done:
        first = _front_phrase(first) or first
    out = first
    for j, c in zip(joints, rest):
        out += j + c
    return out


def distractor(text: str, n: int, rng: np.random.Generator) -> str:
    picks = [DISTRACTORS[i] for i in rng.choice(len(DISTRACTORS), size=min(n, len(DISTRACTORS)), replace=False)]
    core = _core(text)
    if rng.random() < 0.5:
        return core + "; " + "; ".join(picks)
    return _cap(picks[0]) + ", so " + core + ("; " + "; ".join(picks[1:]) if len(picks) > 1 else "")


def typo(text: str, n: int, rng: np.random.Generator, protected: set[str]) -> str:
    """``n`` typos, each in a different word while words last (nested: level L's typos ⊂ level L+1's)."""
    words = [m for m in _WORD.finditer(text) if len(m.group()) >= 3 and m.group().lower() not in protected]
    if not words:
        return text
    order = rng.permutation(len(words)).tolist()
    plan = []
    for t in range(n):
        kind = int(rng.integers(0, 4))
        u = rng.random(2)
        plan.append((order[t % len(order)], kind if t < len(order) else 2, u))  # 2nd round: doubles only
    edits: dict[int, list] = {}
    for wi, kind, u in plan:
        edits.setdefault(wi, []).append((kind, u))
    chars = list(text)
    for wi in sorted(edits, reverse=True):  # right to left: earlier offsets stay valid
        m = words[wi]
        w = list(m.group())
        for kind, u in edits[wi]:
            k = 1 + int(u[0] * (len(w) - 2)) if len(w) > 2 else 0
            k = min(k, len(w) - 1)
            if kind == 0 and k + 1 < len(w) and w[k] != w[k + 1]:
                w[k], w[k + 1] = w[k + 1], w[k]
            elif kind == 1 and len(w) > 2:
                del w[k]
            elif kind == 3 and w[k].lower() in _KEYBOARD:
                nb = _KEYBOARD[w[k].lower()]
                w[k] = nb[int(u[1] * len(nb)) % len(nb)]
            else:
                w.insert(k, w[k])
        chars[m.start():m.end()] = w
    return "".join(chars)


def rewrite(text: str, kind: str, level: int, seed: int, nouns: Sequence[str] = ()) -> str:
    """One rewrite of ``text``; the same (text, kind, level, seed) always gives the same string."""
    if not isinstance(text, str) or not text.strip():
        return text
    rng = np.random.Generator(np.random.PCG64(int(seed) & (2**63 - 1)))
    protected = _protected(text, nouns)
    if kind == "synonym":
        return _finish(synonym(text, int(level), rng, protected), text)
    if kind == "paraphrase":
        return _finish(paraphrase(text, int(level), rng, protected), text)
    if kind == "reorder":
        return _finish(reorder(text, int(level), rng), text)
    if kind == "distractor":
        return _finish(distractor(text, int(level), rng), text)
    if kind == "typo":
        return typo(text, int(level), rng, protected)
    raise ValueError(f"unknown language rewrite '{kind}' (known: synonym, paraphrase, reorder, distractor, typo)")
