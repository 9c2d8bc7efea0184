"""Files of a dataset's layout that no input claims: each becomes a counted failure with its reason.

A converter's discovery claims files (its records' and its failures'). The folders holding claimed files are the
dataset's layout; every other file in them, or in a subfolder of them, is either a known side file (``SIDE_FILES``
and the converter's ``side_files``: licences, metadata tables, ``Thumbs.db``) or a failure "unexpected file" that
says why it was not taken (extension, its case, a space at the end of the name, a subfolder, a name that is not
UTF-8). So "inputs found = converted + failures" accounts for every file there. A linked folder the tree does not
list (it leads out of ``--src`` or loops, ``SourceTree.unlisted``) is a failure wherever it lies: what it holds is
not silently skipped.
"""

from __future__ import annotations

import fnmatch
from itertools import chain

from .datasets import Converter, Failure, Record
from .tree import SourceTree, stem

# file-name globs (case-insensitive) of files that sit beside the inputs of many downloads and are not inputs;
# hidden files (.DS_Store, ._*) and __MACOSX/ are never listed at all
SIDE_FILES = ("LICENSE*", "LICENCE*", "ATTRIBUTION*", "README*", "CITATION*", "*.txt", "*.md", "*.pdf", "*.csv",
              "*.xls", "*.xlsx", "*.json", "*.html", "Thumbs.db", "desktop.ini")


def unclaimed(conv: Converter, tree: SourceTree, records: list[Record], failures: list[Failure]) -> list[Failure]:
    """Failures for the files in the folders of the claimed files (and their subfolders) that nothing claims and
    that are not side files, for the files there whose name is not valid UTF-8, and for every linked folder the tree
    does not list. Inputs found in the folder given as --src itself (generic converters' globs) make its direct
    files count, not its subfolders."""
    claimed = {f for r in records for f in r.files()} | {f for x in failures for f in x.files}
    loose = [f for f in tree.files if f not in claimed]
    # the folders holding claimed files, from the tree's index (a folder's first file is usually claimed): one
    # lookup per folder, not a path split per file, which a million-file download feels
    layout = {folder for folder, files in tree.folders() if any(f in claimed for f in files)}
    if len(tree.files) - len(loose) != len(claimed):  # some claimed path is no file of the tree: its folder too
        layout |= {f.rpartition("/")[0] for f in tree.absent(claimed)}
    homes: dict[str, str | None] = {}  # folder -> the layout folder it is or lies below
    side = tuple(p.lower() for p in SIDE_FILES + conv.side_files)
    strays = []  # (file, its layout folder, its name is not UTF-8)
    others = chain(((f, False) for f in loose), ((f, True) for f in tree.undecodable))
    for f, bad_name in others:
        folder, _, name = f.rpartition("/")
        if folder not in homes:
            homes[folder] = _layout_folder(folder, layout)
        home = homes[folder]
        if home is not None and not any(fnmatch.fnmatchcase(name.lower(), p) for p in side):
            strays.append((f, home, bad_name))
    # the suffixes of the files claimed in the layout folders holding strays (what the reasons name as expected):
    # looked up only when there are strays, not for every claimed file of every build
    claimed_suffixes: dict[str, set[str]] = {home: set() for _, home, _ in strays}
    if claimed_suffixes:
        for c in claimed:
            at_home = claimed_suffixes.get(c.rpartition("/")[0])
            if at_home is not None:
                at_home.add(_suffix(c))
    suffixes = {folder: sorted(found) for folder, found in claimed_suffixes.items()}
    return [Failure(stem(f), (f,), f"unexpected file {f}: {_why(f, home, suffixes[home], bad_name, conv)}")
            for f, home, bad_name in strays] + [Failure(stem(f), (f,), f"folder {f}/ not listed: {reason}")
                                                for f, reason in tree.unlisted.items()]


def _layout_folder(folder: str, layout: set[str]) -> str | None:
    """The folder of the layout that ``folder`` is or lies below (not below the root folder ''), else None."""
    if folder in layout:
        return folder
    while folder:
        folder = folder.rpartition("/")[0]
        if folder and folder in layout:
            return folder
    return None


def _suffix(path: str) -> str:
    """'a/b.PNG' -> '.PNG', 'a/x.nii.gz' -> '.nii.gz', 'a/noext' -> ''."""
    name = path.rpartition("/")[2]
    dot = name.find(".", 1)
    return name[dot:] if dot > 0 else ""


def _why(path: str, home: str, expected: list[str], bad_name: bool, conv: Converter) -> str:
    """Why the file ``path`` below the layout folder ``home`` (whose inputs have the suffixes ``expected``) is no
    input."""
    folder, _, name = path.rpartition("/")
    if bad_name:
        return "its name is not valid UTF-8; rename it (e.g. with convmv) to convert it"
    if folder != home:
        return (f"in the subfolder {folder[len(home) + 1:]}/ of {home}/, where the {conv.name} inputs are files "
                f"directly in {home}/; move it up or remove it")
    if name != name.strip() or stem(name) != stem(name).strip():
        return f"its name begins or ends with a space; rename it to {' '.join(name.split())!r} to convert it"
    ext = _suffix(name)
    shown = ", ".join(e or "(none)" for e in expected)
    where = f"{home}/" if home else "the --src folder"
    if ext not in expected and ext.lower() in {e.lower() for e in expected}:
        return (f"extension {ext} differs in case from the inputs' {shown} in {where} (names are case-sensitive); "
                f"rename it to convert it")
    if ext not in expected:
        return f"extension {ext or '(none)'}, but the {conv.name} inputs in {where} are {shown}; convert or remove it"
    return f"its name matches no input of the {conv.name} layout ({conv.layout})"


__all__ = ["SIDE_FILES", "unclaimed"]
