"""Cards: what a built dataset or a teacher feature store holds, as a JSON-able dict and as readable Markdown.

Pure functions of what the format layer reads (a dataset's manifest, samples list and failures list; a store's run
attrs and resume ledger), so ``medprep info``, the ``card.json`` and ``README.md`` a build writes beside its
manifest, and the tests compute the same numbers.

A dataset card: per split the samples, shards and bytes (and the modality ids of its samples), the source image
sizes (the most common ones), the foreground fraction (min, quartiles, max, empty masks), instances per sample where
an instance map exists, failures by reason with examples, and the build's parameters, medprep version, command line
and source folder (the last two are recorded in the build's ``card.json`` only: the manifest depends on the inputs
and parameters alone). A store card: per run the encoder, checkpoint sha256, dtype, views, done/total, feature bytes
per sample and the dataset (manifest sha256) it was cached from.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from typing import Any

import numpy as np

from . import fsio
from .dataset import BuiltDataset
from .features import STORED, FeatureReader, runs
from .runattrs import RunSchemaError
from .schema import MANIFEST, Manifest

CARD = "card.json"
README = "README.md"
TOP_SIZES = 10  # source image sizes listed (the most common first)
EXAMPLES = 3  # failures shown per reason
# how a build was run: recorded in its card.json, not in the manifest (input_stamps: the digest of its inputs' sizes
# and mtimes, the rerun's fast check for changed inputs)
ORIGIN = ("command", "source", "input_stamps")


def failure_kind(reason: str) -> str:
    """The kind of a failure reason: its text before the first colon (``image without mask: ...``)."""
    return reason.split(":")[0].strip()


def quartiles(values: list[float]) -> dict[str, float] | None:
    """min, q1, median, q3, max and mean of ``values`` (None when empty), rounded to 6 digits."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    q = np.percentile(a, [0, 25, 50, 75, 100])
    return {k: round(float(v), 6) for k, v in zip(("min", "q1", "median", "q3", "max", "mean"), [*q, a.mean()])}


def dataset_card(manifest: Manifest, rows: list[dict[str, Any]], failures: list[dict[str, Any]],
                 origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of a build from its manifest, its ``samples.jsonl`` rows, its ``failures.jsonl`` rows and its
    ``origin`` (``command``: the command line as a list, ``source``: the dataset's source folder; None if unknown)."""
    origin = origin or {}
    splits = []
    for split in manifest.splits():
        shards = manifest.shards_of(split)
        ids = Counter(r.get("modality_id", manifest.modality_id) for r in rows if r["split"] == split)
        splits.append({"split": split, "samples": sum(s.nsamples for s in shards), "shards": len(shards),
                       "bytes": sum(s.bytes for s in shards), "modality_ids": {str(k): ids[k] for k in sorted(ids)}})
    sizes = Counter(tuple(r["original_hw"]) for r in rows if "original_hw" in r)
    fg = [r["foreground"] for r in rows if "foreground" in r]
    inst = [r["instances"] for r in rows if "instances" in r]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for f in failures:
        by_kind.setdefault(failure_kind(f["reason"]), []).append(f)
    return {
        "kind": "dataset",
        "dataset": manifest.dataset,
        "modality": manifest.modality,
        "modality_id": manifest.modality_id,
        "format": manifest.format,
        "generation": manifest.generation,
        "medprep_version": manifest.medprep_version,
        **{k: origin.get(k) for k in ORIGIN},
        "totals": {"samples": manifest.nsamples(), "shards": len(manifest.shards),
                   "bytes": sum(s.bytes for s in manifest.shards), "inputs": manifest.counts.get("inputs"),
                   "failures": len(failures)},
        "splits": splits,
        "sizes": {
            "distinct": len(sizes),
            "top": [{"hw": list(hw), "samples": n}
                    for hw, n in sorted(sizes.items(), key=lambda x: (-x[1], x[0]))[:TOP_SIZES]],
            "min_hw": list(min(sizes, key=lambda hw: (hw[0] * hw[1], hw))) if sizes else None,
            "max_hw": list(max(sizes, key=lambda hw: (hw[0] * hw[1], hw))) if sizes else None,
        },
        "foreground": {**(quartiles(fg) or {}), "samples": len(fg), "empty": sum(int(v == 0) for v in fg)},
        "instances": {**quartiles(inst), "samples": len(inst), "total": int(sum(inst))} if inst else None,
        "failures": [{"reason": kind, "count": len(fs),
                      "examples": [{"source_id": f.get("source_id"), "reason": f["reason"],
                                    "files": f.get("files", [])} for f in fs[:EXAMPLES]]}
                     for kind, fs in sorted(by_kind.items(), key=lambda x: (-len(x[1]), x[0]))],
        "params": manifest.params,
        "split_report": manifest.split_report,
    }


def card_of_dataset(ds: BuiltDataset) -> dict[str, Any]:
    """The card of the built dataset ``ds``, computed from its manifest, samples and failures lists; the command
    line and source folder come from the ``card.json`` its build wrote (None when there is none)."""
    try:
        written = fsio.read_json(ds.file_url(CARD))
    except (FileNotFoundError, ValueError):
        written = {}
    return dataset_card(ds.manifest, list(ds.samples()), ds.failures(),
                        {k: written.get(k) for k in ORIGIN} if isinstance(written, dict) else None)


def run_card(reader: FeatureReader) -> dict[str, Any]:
    """The card of one finished run of a teacher store."""
    a = reader.attrs
    shape = a["feature_shape"]
    per_view = int(np.prod(shape)) * np.dtype(STORED[reader.dtype]).itemsize
    if reader.dtype == "int8":
        per_view += shape[0] * 2  # the float16 per-channel scale
    src = a.get("source") or {}
    done = reader.done()
    return {
        "run": reader.run, "finished": True, "encoder": a.get("encoder"), "encoder_kwargs": a.get("encoder_kwargs"),
        "checkpoint": a.get("checkpoint"), "checkpoint_sha256": a.get("checkpoint_sha256"), "dtype": reader.dtype,
        "views": reader.views, "feature_shape": shape, "samples": reader.n, "done": int(done.sum()),
        "shards": reader.nshards, "done_shards": sum(reader.done_shards()),
        "bytes_per_sample": per_view * len(reader.views), "input_size": a.get("input_size"),
        "resize": a.get("resize"), "pixel_mean": a.get("pixel_mean"), "pixel_std": a.get("pixel_std"),
        "autocast": a.get("autocast"), "source": src, "source_manifest_sha256": a.get("source_manifest_sha256"),
        "medprep_version": a.get("medprep_version"),
    }


def store_card(url: str) -> dict[str, Any]:
    """The card of the teacher store at ``url``: one entry per run (a run whose creation was interrupted is listed
    as not finished, a run whose attributes or arrays do not match the format as not readable)."""
    out = []
    for run in runs(url):
        try:
            out.append(run_card(FeatureReader.open(url, run)))
        except RunSchemaError as e:
            out.append({"run": run, "finished": True, "readable": False, "problem": str(e)})
        except ValueError as e:
            out.append({"run": run, "finished": False, "problem": str(e)})
    return {"kind": "teacher-store", "url": url, "runs": out}


def kind_of(path: str) -> str:
    """``dataset`` for a built dataset (holding ``manifest.json``), ``teacher-store`` for a zarr teacher store;
    anything else raises ``FileNotFoundError``."""
    fs, base = fsio.fs_and_path(path)
    if fs.exists(fsio.join(base, MANIFEST)):
        return "dataset"
    if fs.exists(fsio.join(base, "zarr.json")):
        return "teacher-store"
    raise FileNotFoundError(f"{path} is neither a built dataset (no {MANIFEST}) nor a teacher store (no zarr.json): "
                            f"pass a folder written by 'medprep build' or 'medprep cache-teacher'")


def card(path: str) -> dict[str, Any]:
    """The card of ``path``: a built dataset or a teacher store (see :func:`kind_of`)."""
    return card_of_dataset(BuiltDataset(path)) if kind_of(path) == "dataset" else store_card(path)


# -- Markdown -----------------------------------------------------------------------------------------------------
def _num(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows), ""]


def _stats_table(stats: dict[str, Any], extra: list[tuple[str, Any]]) -> list[str]:
    keys = ["min", "q1", "median", "q3", "max", "mean"]
    return _table([*keys, *(k for k, _ in extra)], [[f"{stats[k]:.4g}" for k in keys] + [v for _, v in extra]])


def _short(value: Any, limit: int = 5) -> str:
    """A parameter or split-report value for a table cell: long lists cut to ``limit`` items with a count."""
    if isinstance(value, list) and len(value) > limit:
        return f"{', '.join(map(str, value[:limit]))}, ... ({len(value)} in all)"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    if value is None:
        return "-"
    return f"`{json.dumps(value, sort_keys=True)}`" if isinstance(value, dict) else str(value)


def _dataset_markdown(c: dict[str, Any]) -> list[str]:
    t = c["totals"]
    lines = [f"# {c['dataset']}: dataset card", "",
             f"{c['modality']} (modality id {c['modality_id']}) · {_num(t['samples'])} samples in {t['shards']} "
             f"shards ({_bytes(t['bytes'])}) · {_num(t['inputs'])} inputs, {t['failures']} failures · generation "
             f"{c['generation']} · medprep {c['medprep_version']} · {c['format']}", ""]
    command, source = c.get("command"), c.get("source")
    how = shlex.join(command) if command else "(the Python API: medprep.prep.build)" if source else "(not recorded)"
    lines += [f"- built by: `{how}`", f"- source: `{source or '(not recorded)'}`", "", "## Splits", ""]
    lines += _table(["split", "samples", "shards", "bytes", "modality ids (samples)"],
                    [[s["split"], _num(s["samples"]), s["shards"], _bytes(s["bytes"]),
                      ", ".join(f"{k}: {v}" for k, v in s["modality_ids"].items())] for s in c["splits"]]
                    + [["**all**", _num(t["samples"]), t["shards"], _bytes(t["bytes"]), ""]])
    sz = c["sizes"]
    lines += ["## Source image sizes", ""]
    if sz["distinct"]:
        lines += _table(["height x width", "samples"], [[f"{h} x {w}", n] for (h, w), n in
                                                        ((x["hw"], x["samples"]) for x in sz["top"])])
        lines += [f"{sz['distinct']} distinct sizes; smallest {sz['min_hw'][0]} x {sz['min_hw'][1]}, largest "
                  f"{sz['max_hw'][0]} x {sz['max_hw'][1]}.", ""]
    else:
        lines += ["(no sizes recorded)", ""]
    fg = c["foreground"]
    lines += ["## Foreground fraction of the mask", ""]
    lines += _stats_table(fg, [("empty masks", f"{fg['empty']} of {fg['samples']}")]) if fg["samples"] else \
        ["(no samples)", ""]
    if c["instances"]:
        inst = c["instances"]
        lines += ["## Instances per sample", ""]
        lines += _stats_table(inst, [("samples with a map", inst["samples"]), ("instances", _num(inst["total"]))])
    lines += ["## Failures", ""]
    if c["failures"]:
        lines += _table(["reason", "inputs", "examples"],
                        [[f["reason"], f["count"], "; ".join(f"{e['source_id']} ({e['reason']})"
                                                            for e in f["examples"])] for f in c["failures"]])
    else:
        lines += ["none", ""]
    lines += ["## Build parameters", ""]
    lines += _table(["parameter", "value"], [[k, _short(v)] for k, v in sorted(c["params"].items())])
    if c["split_report"]:
        lines += ["## Split report", ""]
        lines += _table(["field", "value"], [[k, _short(v)] for k, v in sorted(c["split_report"].items())])
    return lines


def _store_markdown(c: dict[str, Any]) -> list[str]:
    lines = [f"# {c['url']}: teacher feature store", "", f"{len(c['runs'])} run(s)", ""]
    for r in c["runs"]:
        lines += [f"## {r['run']}", ""]
        if not r["finished"]:
            lines += [f"not finished being created: {r['problem']}", ""]
            continue
        if r.get("readable") is False:
            lines += [f"cannot be read: {r['problem']}", ""]
            continue
        src = r["source"]
        where = src.get("url")
        lines += _table(["field", "value"], [
            ["encoder", f"{r['encoder']} {r['encoder_kwargs'] or ''}".strip()],
            ["checkpoint", f"{r['checkpoint'] or '(none)'} (sha256 {r['checkpoint_sha256'] or '-'})"],
            ["dtype, views", f"{r['dtype']}, {', '.join(r['views'])}"],
            ["features per sample", f"{' x '.join(map(str, r['feature_shape']))} ({_bytes(r['bytes_per_sample'])})"],
            ["done", f"{r['done']} of {r['samples']} samples ({r['done_shards']} of {r['shards']} zarr shards)"],
            ["input", f"{r['input_size']} px, resize {r['resize']}, autocast {r['autocast']}"],
            ["source", f"{src.get('kind')} {src.get('dataset', '')} {where if isinstance(where, str) else where}"
                       + (f", split {src['split']}" if src.get("split") else "")],
            ["source manifest sha256", r["source_manifest_sha256"] or "-"],
            ["medprep", r["medprep_version"]],
        ])
    return lines


def markdown(c: dict[str, Any]) -> str:
    """A card as Markdown (the ``README.md`` of a build; ``medprep info`` prints it)."""
    return "\n".join(_dataset_markdown(c) if c["kind"] == "dataset" else _store_markdown(c)).rstrip() + "\n"


__all__ = ["CARD", "README", "card", "card_of_dataset", "dataset_card", "failure_kind", "kind_of", "markdown",
           "quartiles", "run_card", "store_card"]
