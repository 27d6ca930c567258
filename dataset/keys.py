"""The one rule by which files that name images are joined (scores or labels with embeddings, training items with the
images folder and the teacher embeddings, evaluation pairs with qualities and embeddings). Pure functions: no file
access.

A key of one file names a key of another when the two are

1. equal **as written**; or else, in the normal form (``\\`` read as ``/``, repeated ``/`` as one, a leading ``./``
   and a trailing ``/`` dropped),
2. equal, or **one is the other below a folder** (a path suffix at a ``/``: ``faces/id00/00.jpg`` and
   ``/data/faces/id00/00.jpg`` name ``id00/00.jpg``, and a pairs file's ``id00/00.jpg`` names ``train/id00/00.jpg``
   of the official teacher embeddings); or
3. equal **relative to each file's common folder**: the longest folder that holds the folder of every key of that
   file, stripped from each of its keys. A key always keeps its own folder (the identity): ``faces/id00/00.jpg``
   and ``data/id00/00.jpg`` are one image (a renamed images folder), while a file whose keys all lie in ``id03``
   strips nothing, so ``faces/id03/a.jpg`` never names ``id00/a.jpg``.

Why this and not plain "relative to each file's common folder": the common folder of one identity's keys is that
identity's folder, and stripping it left bare file names, which join different identities of a set whose folders
use the same file names. Under 2 and 3, a folder component is only ever dropped where the other key has none, or
above both keys' own folders, so two keys whose own folders differ never match. A key without a folder (a bare
file name) still names the one key that ends in it (2); where several do, it is an error.

A key that would name two different keys of the other file, or (``one_to_one``) two keys that would name the same
one, are an error (never a silent pick).
"""
from __future__ import annotations

import os
import re
from typing import Any, Collection, Dict, List, Optional, Sequence

from utils.config import short
from utils.errors import DataError

__all__ = ["normal_key", "normal_keys", "common_folder", "relative_keys", "match_keys", "unmatched_message",
           "require_keys", "RULE"]

#: The rule in words, for messages and docs.
RULE = ("as written, one as the other below a folder, or relative to each file's common folder above the keys' own "
        "folders")

_SLASHES = re.compile(r"/{2,}")


def normal_key(key: str) -> str:
    """``key`` with ``/`` separators: ``\\`` read as ``/``, repeated ``/`` as one, leading ``./`` and trailing ``/``
    dropped (``'.\\\\id0//a.jpg/'`` -> ``'id0/a.jpg'``); a leading ``/`` (an absolute path) is kept."""
    if "\\" not in key and "//" not in key and not key.startswith("./") and not key.endswith("/"):
        return key  # the common case, without a copy
    key = _SLASHES.sub("/", key.replace("\\", "/"))
    while key.startswith("./"):
        key = key[2:]
    return key.rstrip("/") if len(key) > 1 else key


def common_folder(keys: Sequence[str]) -> str:
    """The longest folder (``/``-separated, no trailing ``/``) that holds the folder of every one of the normal
    ``keys``, so that each key keeps its own folder; ``''`` when there is none:
    ``['faces/id0/a.jpg', 'faces/id1/b.jpg']`` -> ``'faces'``, ``['faces/id0/a.jpg', 'faces/id0/b.jpg']`` ->
    ``'faces'`` (not ``'faces/id0'``), ``['faces/a.jpg']`` -> ``''``."""
    if not keys:
        return ""
    prefix = os.path.commonprefix(keys)  # as strings (C speed), then cut back to whole components
    cut = prefix.rfind("/")
    if cut <= 0 or not isinstance(keys, list):
        return "" if cut <= 0 else common_folder(list(keys))
    # The folder of every key, less its last component where some key lies in it directly (keeps its own folder).
    if any(k.find("/", cut + 1) < 0 for k in keys):
        cut = prefix.rfind("/", 0, cut)
    return prefix[:max(cut, 0)]


def relative_keys(keys: Sequence[str]) -> List[str]:
    """Each key relative to the keys' :func:`common_folder` (normal form; each keeps its own folder):
    ``['faces/id0/a.jpg', 'faces/id1/b.jpg']`` -> ``['id0/a.jpg', 'id1/b.jpg']``."""
    normal = [normal_key(k) for k in keys]
    folder = common_folder(normal)
    cut = len(folder) + 1 if folder else 0
    return [k[cut:] for k in normal]


def normal_keys(keys: Sequence[str]) -> List[str]:
    """:func:`normal_key` of each key (the test inlined: most keys are normal already)."""
    return [normal_key(k) if ("\\" in k or "//" in k or k[:2] == "./" or k[-1:] == "/") else k for k in keys]


def _tails(keys: Sequence[str]) -> List[str]:
    """The last two components of each normal key (its own folder and file), the whole key when it has fewer: two
    keys that match by the rule have equal tails unless one is a bare file name."""
    return [k[k.rfind("/", 0, max(k.rfind("/"), 0)) + 1:] for k in keys]


def _names(normal: str, rel: str, other: str, other_rel: str) -> bool:
    """Whether two keys (normal and relative forms) name one image by rules 2 and 3."""
    return normal == other or rel == other_rel or normal.endswith("/" + other) or other.endswith("/" + normal)


def _bucket(keys: Sequence[str]) -> Dict[str, Any]:
    """``{key: index}`` of the first of equal keys, ``{key: [index, ...]}`` where keys repeat (built at C speed when
    none do)."""
    table: Dict[str, Any] = dict(zip(keys, range(len(keys))))
    if len(table) == len(keys):
        return table
    table = {}
    for i, key in enumerate(keys):
        old = table.setdefault(key, i)
        if old != i:
            table[key] = old + [i] if isinstance(old, list) else [old, i]
    return table


def _get(table: Dict[str, Any], key: str) -> List[int]:
    hit = table.get(key)
    return [] if hit is None else hit if isinstance(hit, list) else [hit]


class _Index:
    """The normal keys of one file bucketed by their last two components (:func:`_tails`), and by file name for
    the bare keys of the other file: the few candidates each key is checked against, built once."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.normal = normal_keys(keys)
        folder = common_folder(self.normal)
        self.cut = len(folder) + 1 if folder else 0
        self.by_tail = _bucket(_tails(self.normal))
        self.bare_index = [i for i, k in enumerate(self.normal) if "/" not in k]  # they name keys ending in them
        self.bare = _bucket([self.normal[i] for i in self.bare_index])
        self.by_name: Optional[Dict[str, Any]] = None

    def candidates(self, key: str, tail: str) -> List[int]:
        """Indices of the keys that may name the normal ``key`` (whose tail is ``tail``)."""
        found = _get(self.by_tail, tail)
        name = key[key.rfind("/") + 1:]
        if self.bare and name != key:
            found = found + [self.bare_index[i] for i in _get(self.bare, name)]
        if name == key:
            if self.by_name is None:
                named = [i for i, k in enumerate(self.normal) if "/" in k]
                by_name = _bucket([self.normal[i][self.normal[i].rfind("/") + 1:] for i in named])
                self.by_name = {k: ([named[i] for i in v] if isinstance(v, list) else named[v])
                                for k, v in by_name.items()}
            found = found + _get(self.by_name, key)
        return found


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
    theirs = _Index(order)
    their_normal, their_cut, by_tail = theirs.normal, theirs.cut, theirs.by_tail
    normal = normal_keys(distinct)
    folder = common_folder(normal)
    cut = len(folder) + 1 if folder else 0
    simple = not theirs.bare  # no bare key on their side: a key with a folder has only its tail's bucket
    found: Dict[str, Optional[str]] = {}
    for key, norm, tail in zip(distinct, normal, _tails(normal)):
        if key in available:
            found[key] = key
            continue
        hit = by_tail.get(tail) if simple and "/" in norm else None
        if isinstance(hit, int):  # one candidate: the common case
            other = their_normal[hit]
            same = (norm == other or norm[cut:] == other[their_cut:] or norm.endswith("/" + other)
                    or other.endswith("/" + norm))  # _names, inlined
            found[key] = order[hit] if same else None
            continue
        rel = norm[cut:]
        candidates = [j for j in dict.fromkeys(theirs.candidates(norm, tail))
                      if _names(norm, rel, their_normal[j], their_normal[j][their_cut:])]
        if len(candidates) > 1:
            raise DataError(f"{wanted_source}: {short(key)} names {len(candidates)} different keys of "
                            f"{available_source} ({_examples([order[j] for j in sorted(candidates)])}), {RULE}; "
                            "give each image one key")
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

