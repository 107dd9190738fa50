"""``lazypull layer inspect|verify|convert``: one layer blob at a time, no store, no registry.

``convert`` takes ctr-remote / nerdctl's flag names (``--estargz-*``, ``--zstdchunked*``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import click

from lazypull.cli._options import global_options
from lazypull.errors import LazypullError
from lazypull.format import BuildOptions, BuildResult, FileSource, FormatError, LayerReader, build, open_layer
from lazypull.format.reader import DEFAULT_MAX_TOC_SIZE
from lazypull.format.record import parse_record
from lazypull.smallfile import read_small


@click.group("layer")
@global_options
def layer() -> None:
    """Inspect, verify and convert single eStargz / zstd:chunked layer blobs."""


def _open(blob: str, toc_digest: str | None, toc_file: str | None) -> tuple[FileSource, LayerReader]:
    external = None
    if toc_file:
        external = read_small(toc_file, DEFAULT_MAX_TOC_SIZE, "TOC file", LazypullError)
        if external is None:
            raise click.BadParameter(f"{toc_file}: no such file", param_hint="--toc")
    src = FileSource(blob)
    try:
        return src, open_layer(src, toc_digest=toc_digest, external_toc=external)
    except FormatError as err:
        src.close()
        raise FormatError(f"{blob}: {err}") from err


def _summary(blob: str, r: LayerReader) -> dict[str, Any]:
    counts: dict[str, int] = {}
    content = 0
    for e in r.entries():
        counts[e.type] = counts.get(e.type, 0) + 1
        if e.type == "reg":
            content += e.size
    prefetch = r.prefetch_range()
    return {
        "blob": blob,
        "footer": r.footer_kind,
        "compression": r.compression,
        "blobSize": r.blob_size,
        "tocOffset": r.footer.toc_offset,
        "tocDigest": r.toc_digest,
        "tocSize": len(r.toc_json),
        "manifestChecksum": r.manifest_checksum,
        "tocSchema": r.toc.schema,
        "entries": len(r.toc.entries),
        "types": dict(sorted(counts.items())),
        "contentSize": content,
        "landmark": r.landmark(),
        "prefetchSize": prefetch[1] - prefetch[0] if prefetch else 0,
    }


@layer.command("inspect")
@global_options
@click.argument("blob", type=click.Path(exists=True, dir_okay=False))
@click.option("--toc", "toc_file", type=click.Path(exists=True, dir_okay=False),
              help="External TOC blob (layers built with --estargz-external-toc).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect_cmd(blob: str, toc_file: str | None, as_json: bool) -> None:
    """Footer kind, TOC digest, entry counts, landmark and prefetch size of BLOB."""
    src, reader = _open(blob, None, toc_file)
    with src:
        info = _summary(blob, reader)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        click.echo(f"{key + ':':<18}{value}")


@layer.command("verify")
@global_options
@click.argument("blob", type=click.Path(exists=True, dir_okay=False))
@click.option("--toc-digest", default=None, help="Expected TOC digest (toc.digest or manifest-checksum).")
@click.option("--toc", "toc_file", type=click.Path(exists=True, dir_okay=False), help="External TOC blob.")
def verify_cmd(blob: str, toc_digest: str | None, toc_file: str | None) -> None:
    """Check the TOC digest and every chunk of BLOB; exit 1 naming what failed."""
    src, reader = _open(blob, toc_digest, toc_file)
    with src:
        try:
            reader.verify()
        except FormatError as err:
            raise FormatError(f"{blob}: {err}") from err
    how = {"toc": "TOC digest checked", "manifest": "manifest checksum checked"}.get(
        reader.verified_by or "", "TOC digest not checked (no --toc-digest)")
    click.echo(f"{blob}: ok ({reader.footer_kind}, {len(reader.toc.entries)} entries, {how})")


def _result_json(res: BuildResult, toc_out: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "blobDigest": res.blob_digest, "blobSize": res.blob_size, "diffID": res.diff_id,
        "uncompressedSize": res.uncompressed_size, "tocDigest": res.toc_digest,
        "annotations": res.annotations, "missed": res.missed,
    }
    if res.toc_blob is not None:
        out["externalTOC"] = {"path": toc_out, "size": len(res.toc_blob),
                              "digest": "sha256:" + hashlib.sha256(res.toc_blob).hexdigest()}
    return out


@layer.command("convert")
@global_options
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--estargz", is_flag=True, help="Convert to eStargz (the default).")
@click.option("--estargz-compression-level", type=click.IntRange(0, 9), default=9, show_default=True)
@click.option("--estargz-chunk-size", type=int, default=0, help="Chunk size (0: 4 MiB).")
@click.option("--estargz-min-chunk-size", type=click.IntRange(min=0), default=0,
              help="Let payloads smaller than this share a gzip member.")
@click.option("--estargz-record-in", type=click.Path(exists=True, dir_okay=False),
              help="ctr-remote record file: files to prioritise.")
@click.option("--estargz-external-toc", is_flag=True, help="Write the TOC as a separate blob.")
@click.option("--toc-out", type=click.Path(dir_okay=False), help="Where the external TOC goes (OUT.toc.gz).")
@click.option("--estargz-keep-diff-id", is_flag=True, help="Lossless: keep the DiffID (needs external TOC).")
@click.option("--zstdchunked", is_flag=True, help="Convert to zstd:chunked.")
@click.option("--zstdchunked-compression-level", type=click.IntRange(1, 22), default=3, show_default=True)
@click.option("--parallelism", type=click.IntRange(min=1), default=None, help="Parts compressed at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def convert_cmd(src: str, dst: str, estargz: bool, estargz_compression_level: int, estargz_chunk_size: int,
                estargz_min_chunk_size: int, estargz_record_in: str | None, estargz_external_toc: bool,
                toc_out: str | None, estargz_keep_diff_id: bool, zstdchunked: bool,
                zstdchunked_compression_level: int, parallelism: int | None, as_json: bool) -> None:
    """Convert the tar layer IN (plain, gzip or zstd) to an eStargz or zstd:chunked blob OUT."""
    if estargz and zstdchunked:
        raise click.UsageError("--estargz and --zstdchunked are exclusive")
    if estargz_keep_diff_id and not estargz_external_toc:
        raise click.UsageError("--estargz-keep-diff-id requires --estargz-external-toc")
    if zstdchunked and (estargz_external_toc or estargz_keep_diff_id):
        raise click.UsageError("--estargz-external-toc and --estargz-keep-diff-id are eStargz only")
    prioritized = None
    if estargz_record_in:
        if estargz_keep_diff_id:
            raise click.UsageError("--estargz-record-in cannot be used with --estargz-keep-diff-id")
        prioritized = parse_record(Path(estargz_record_in).read_bytes(), where=estargz_record_in)
    options = BuildOptions(
        compression="zstd" if zstdchunked else "gzip",
        level=zstdchunked_compression_level if zstdchunked else estargz_compression_level,
        chunk_size=estargz_chunk_size,
        min_chunk_size=estargz_min_chunk_size,
        prioritized_files=prioritized,
        external_toc=estargz_external_toc,
        keep_diff_id=estargz_keep_diff_id,
        parallelism=parallelism,
    )
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            res = build(fin, fout, options)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if res.toc_blob is not None:
        toc_out = toc_out or f"{dst}.toc.gz"
        Path(toc_out).write_bytes(res.toc_blob)
    if as_json:
        click.echo(json.dumps(_result_json(res, toc_out), indent=2))
        return
    click.echo(f"blob        {res.blob_digest} ({res.blob_size} bytes) -> {dst}")
    click.echo(f"diffID      {res.diff_id} ({res.uncompressed_size} bytes)")
    click.echo(f"TOC digest  {res.toc_digest}")
    if res.toc_blob is not None:
        click.echo(f"TOC blob    {len(res.toc_blob)} bytes -> {toc_out}")
    for key, value in res.annotations.items():
        click.echo(f"annotation  {key}={value}")
    for name in res.missed:
        click.echo(f"missed      {name}", err=True)


COMMANDS = [layer]
