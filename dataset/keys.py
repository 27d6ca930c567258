"""The one rule by which files that name images are joined (scores or labels with embeddings, training items with the
images folder and the teacher embeddings, evaluation pairs with qualities and embeddings). Pure functions: no file
access.

A key of one source names a key of another when the two are equal **as written**, or else when they are equal
**relative to each source's own common folder**: the longest folder that holds every key of that source, stripped
from each of its keys. ``inference.py`` writes ``faces/id00/00.jpg`` (the images folder as typed, plus the file),
``extract_embeddings.py`` ``id00/00.jpg``: relative to their common folders (``faces`` and none) both are
``id00/00.jpg``. A key written as is may also name the other's relative form, and the other way round (a pairs file
of relative paths with scores keyed by the folder, training items with embeddings keyed by the last three
components). For the relative forms, ``\\`` is read as ``/``, repeated ``/`` as one, and a leading ``./`` and
trailing ``/`` are dropped; an absolute path's folder is a common folder like any other.

Two different keys of one source that are equal in the relative form, or a key that would name two different keys of
the other source, are an error (never a silent pick), as are two keys that would name the same one.
"""
from __future__ import annotations

import re
from typing import Collection, Dict, List, Optional, Sequence

from utils.config import short
from utils.errors import DataError

__all__ = ["normal_key", "common_folder", "relative_keys", "match_keys", "unmatched_message", "require_keys", "RULE"]

#: The rule in words, for messages and docs.
RULE = "as written or relative to each file's common folder"

_SLASHES = re.compile(r"/{2,}")


def normal_key(key: str) -> str:
    """``key`` with ``/`` separators: ``\\`` read as ``/``, repeated ``/`` as one, leading ``./`` and trailing ``/``
    dropped (``'.\\\\id0//a.jpg/'`` -> ``'id0/a.jpg'``); a leading ``/`` (an absolute path) is kept."""
    key = _SLASHES.sub("/", key.replace("\\", "/"))
    while key.startswith("./"):
        key = key[2:]
    return key.rstrip("/") if len(key) > 1 else key


def common_folder(keys: Sequence[str]) -> str:
    """The longest folder (``/``-separated, no trailing ``/``) that holds every one of the normal ``keys``; ``''``
    when there is none. One key's common folder is its own folder: ``['faces/id0/a.jpg']`` -> ``'faces/id0'``."""
    folder: Optional[List[str]] = None
    for key in keys:
        parts = key.split("/")[:-1]
        if folder is None:
            folder = parts
        else:
            n = 0
            for a, b in zip(folder, parts):
                if a != b:
                    break
                n += 1
            del folder[n:]
        if not folder:
            return ""
    return "/".join(folder or [])


def relative_keys(keys: Sequence[str]) -> List[str]:
    """Each key relative to the keys' :func:`common_folder` (normal form):
    ``['faces/id0/a.jpg', 'faces/id1/b.jpg']`` -> ``['id0/a.jpg', 'id1/b.jpg']``."""
    normal = [normal_key(k) for k in keys]
    folder = common_folder(normal)
    cut = len(folder) + 1 if folder else 0
    return [k[cut:] for k in normal]


def _forms(keys: Sequence[str]) -> Dict[str, List[int]]:
    """``{form: [index, ...]}`` of each key's forms: as written and relative (of different keys, both listed)."""
    forms: Dict[str, List[int]] = {}
    for i, (key, rel) in enumerate(zip(keys, relative_keys(keys))):
        forms.setdefault(key, []).append(i)
        if rel != key:
            forms.setdefault(rel, []).append(i)
    return forms


def _examples(items: Sequence[str], n: int = 2) -> str:
    return ", ".join(short(x) for x in items[:n])


def match_keys(wanted: Sequence[str], available: Collection[str], wanted_source: str, available_source: str,
               one_to_one: bool = True) -> List[Optional[str]]:
    """The key of ``available`` that each key of ``wanted`` names by the rule of this module, ``None`` where none.

    ``wanted_source``/``available_source`` name the two files in messages (``"labels file 'q.csv'"``). Keys found as
    written are taken as they are (checked first, at C speed); the relative forms are built only when some are not.
    A key that names two keys of ``available``, or (``one_to_one``) two keys of ``wanted`` that name the same one,
    is a :class:`DataError`: two different keys that are equal in the relative form are never a silent pick.

    >>> match_keys(['faces/id0/a.jpg', 'faces/id1/b.jpg', 'faces/id1/c.jpg'], ['id0/a.jpg', 'id1/b.jpg'],
    ...            "scores file 's.csv'", "embeddings file 'e.pkl'")
    ['id0/a.jpg', 'id1/b.jpg', None]
    """
    if all(map(available.__contains__, wanted)):  # the common case: every key as written
        return list(wanted)
    distinct = list(dict.fromkeys(wanted))
    order = list(available)
    theirs = _forms(order)
    found: Dict[str, Optional[str]] = {}
    for key, rel in zip(distinct, relative_keys(distinct)):
        if key in available:
            found[key] = key
            continue
        candidates = sorted({j for form in (key, rel) for j in theirs.get(form, ())})
        if len(candidates) > 1:
            raise DataError(f"{wanted_source}: {short(key)} names {len(candidates)} different keys of "
                            f"{available_source} ({_examples([order[j] for j in candidates])}), {RULE}; give each "
                            "image one key")
        found[key] = order[candidates[0]] if candidates else None
    if one_to_one:
        owner: Dict[str, str] = {}
        for key in distinct:
            hit = found[key]
            if hit is not None and owner.setdefault(hit, key) != key:
                raise DataError(f"{wanted_source}: {short(owner[hit])} and {short(key)} both name {short(hit)} of "
                                f"{available_source}, {RULE}; give each image one key")
    return [found[k] for k in wanted]


def unmatched_message(wanted: Sequence[str], matched: Sequence[Optional[str]], available: Collection[str],
                      wanted_source: str, available_source: str, what: str = "keys") -> str:
    """One line on the keys of ``wanted`` that :func:`match_keys` found no partner for (``matched`` None): how many
    of how many, the rule, one example key from each file. ``what`` names the keys (``"labelled images"``)."""
    missing = [k for k, m in zip(wanted, matched) if m is None]
    example = next(iter(available), None)
    theirs = f"{short(example)} in the second" if example is not None else "the second is empty"
    return (f"{len(missing)} of {len(wanted)} {what} of {wanted_source} are not in {available_source}, {RULE} "
            f"(e.g. {short(missing[0]) if missing else '-'} in the first, {theirs})")


def require_keys(wanted: Sequence[str], available: Collection[str], wanted_source: str, available_source: str,
                 what: str = "keys", fix: str = "") -> List[str]:
    """:func:`match_keys` where every key must be found: else one :class:`DataError` line
    (:func:`unmatched_message`, then ``fix``)."""
    matched = match_keys(wanted, available, wanted_source, available_source)
    if any(m is None for m in matched):
        raise DataError(unmatched_message(wanted, matched, available, wanted_source, available_source, what)
                        + (f"; {fix}" if fix else ""))
    return matched  # type: ignore[return-value]

