"""The one rule by which files that name images are joined (scores or labels with embeddings, training items with the
images folder and the teacher embeddings, evaluation pairs with qualities and embeddings). Pure functions: no file
access.

A key of one file names a key of another when the two are

1. equal **as written**; or else, in the normal form (``\\`` read as ``/``, repeated ``/`` as one, a leading ``./``
   and a trailing ``/`` dropped),
2. equal, or **one is the other below a folder** (a path suffix at a ``/``): ``faces/id00/00.jpg`` (``inference.py
   --images faces``) and ``/data/faces/id00/00.jpg`` name ``id00/00.jpg`` (``extract_embeddings.py``), a pairs
   file's ``id00/00.jpg`` names ``train/id00/00.jpg`` of the official teacher embeddings. This is "relative to the
   file's common folder" where that folder is the images folder one file carries and the other does not.

Why not also "relative to each file's common folder" when both files carry different folders: the common folder
of one identity's keys is that identity's folder (or a person's, above video folders), so stripping it joins
different identities whose folders use the same file names (``id03/a.jpg`` and ``id00/a.jpg``; ``Alice/v0/00.png``
and ``Bob/v0/00.png``), and different sets (``train/`` and ``test/``) too. Two keys whose folders differ at the same
place never match; a renamed images folder is the unmatched-keys error, which says to key both files from one
folder. A key without a folder (a bare file name) names the one key that ends in it; where several do, it is an
error; a file of bare names cannot tell identities apart, so key files from the folder above the identity folders.

A key that would name two different keys of the other file, or two keys that would name the same one, are an error
(never a silent pick); with ``one_to_one`` off (pairs may spell one image twice) two keys may name one key only
when they name each other.
"""
from __future__ import annotations

import re
from typing import Any, Collection, Dict, List, Optional, Sequence

from utils.config import short
from utils.errors import DataError

__all__ = ["normal_key", "normal_keys", "match_keys", "unmatched_message", "require_keys", "RULE"]

#: The rule in words, for messages and docs.
RULE = "as written or one as the other below a folder"

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


def normal_keys(keys: Sequence[str]) -> List[str]:
    """:func:`normal_key` of each key (the test inlined: most keys are normal already)."""
    return [normal_key(k) if ("\\" in k or "//" in k or k[:2] == "./" or k[-1:] == "/") else k for k in keys]


def _tails(keys: Sequence[str]) -> List[str]:
    """The last two components of each normal key (its own folder and file), the whole key when it has fewer: two
    keys that match by the rule have equal tails unless one is a bare file name."""
    return [k[k.rfind("/", 0, max(k.rfind("/"), 0)) + 1:] for k in keys]


def _names(normal: str, other: str) -> bool:
    """Whether two normal keys name one image by rule 2."""
    return normal == other or normal.endswith("/" + other) or other.endswith("/" + normal)


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
    written are taken as they are (checked first, at C speed); the normal forms are built only when some are not.
    A key that names two keys of ``available``, or two keys of ``wanted`` that name the same one (with
    ``one_to_one`` off: unless they name each other, one image spelled twice), is a :class:`DataError`: never a
    silent pick.

    >>> match_keys(['faces/id0/a.jpg', 'faces/id1/b.jpg', 'faces/id1/c.jpg'], ['id0/a.jpg', 'id1/b.jpg'],
    ...            "scores file 's.csv'", "embeddings file 'e.pkl'")
    ['id0/a.jpg', 'id1/b.jpg', None]
    """
    if all(map(available.__contains__, wanted)):  # the common case: every key as written
        return list(wanted)
    distinct = list(dict.fromkeys(wanted))
    order = list(available)
    theirs = _Index(order)
    their_normal, by_tail = theirs.normal, theirs.by_tail
    normal = normal_keys(distinct)
    simple = not theirs.bare  # no bare key on their side: a key with a folder has only its tail's bucket
    found: Dict[str, Optional[str]] = {}
    for key, norm, tail in zip(distinct, normal, _tails(normal)):
        if key in available:
            found[key] = key
            continue
        hit = by_tail.get(tail) if simple and "/" in norm else None
        if isinstance(hit, int):  # one candidate: the common case
            other = their_normal[hit]
            same = norm == other or norm.endswith("/" + other) or other.endswith("/" + norm)  # _names, inlined
            found[key] = order[hit] if same else None
            continue
        candidates = [j for j in dict.fromkeys(theirs.candidates(norm, tail)) if _names(norm, their_normal[j])]
        if len(candidates) > 1:
            raise DataError(f"{wanted_source}: {short(key)} names {len(candidates)} different keys of "
                            f"{available_source} ({_examples([order[j] for j in sorted(candidates)])}), {RULE}; "
                            "give each image one key")
        found[key] = order[candidates[0]] if candidates else None
    if theirs.bare:
        _check_bare(normal, [found[k] for k in distinct], dict(zip(order, their_normal)), available_source,
                    wanted_source)
    owner: Dict[str, str] = {}
    normal_of = dict(zip(distinct, normal))
    for key in distinct:
        hit = found[key]
        if hit is not None and owner.setdefault(hit, key) != key:
            if not one_to_one and _names(normal_of[owner[hit]], normal_of[key]):
                continue  # one image spelled twice ('id0/a.jpg', './id0/a.jpg')
            raise DataError(f"{wanted_source}: {short(owner[hit])} and {short(key)} both name {short(hit)} of "
                            f"{available_source}, {RULE}; give each image one key")
    return [found[k] for k in wanted]


def _check_bare(normal: Sequence[str], hits: Sequence[Optional[str]], theirs: Dict[str, str], bare_source: str,
                other_source: str) -> None:
    """A :class:`DataError` when a bare key of the other file (a file name, no folder; ``theirs``: its keys' normal
    forms) was taken below a folder by one of the ``normal`` keys although another of them that does not name it
    also ends in it: a bare key names the one key that ends in it (``a.jpg`` beside ``id0/a.jpg`` and ``id1/a.jpg``
    names neither, whichever of them the other file also holds with its folder; a key ``a.jpg`` of this file is
    named by it as written). ``hits``: what :func:`match_keys` found for each of ``normal``."""
    bare = {theirs[h]: h for norm, h in zip(normal, hits) if h is not None and "/" not in theirs[h]
            and theirs[h] != norm}
    if not bare:
        return
    ends: Dict[str, List[str]] = {}
    for norm in dict.fromkeys(normal):
        name = norm[norm.rfind("/") + 1:]
        if name in bare:
            ends.setdefault(name, []).append(norm)
    for name, keys in ends.items():
        longest = max(keys, key=len)
        if any(not _names(longest, k) for k in keys):
            raise DataError(f"{bare_source}: {short(bare[name])} (a file name without a folder) names "
                            f"{len(keys)} keys of {other_source} ({_examples(keys)}), {RULE}; key the file from the "
                            "folder above the identity folders, as the other")


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

