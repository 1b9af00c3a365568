"""Ingest of junk: time and peak memory of a real sync over a folder of hostile files.

    .venv/bin/python bench/bench_junk.py            # 2 x 50 MB logs, bombs, junk, good files
    .venv/bin/python bench/bench_junk.py --quick    # smaller sizes

The folder is generated in a temporary directory (nothing hostile is committed): the inputs
that stalled or killed the ingest before this round, beside good files copied from
../shared/corpus/drive (real docx/pptx/xlsx/pdf) and written markdown pages:

- a 50 MB text log (over the 5-million-character limit) and a 4 MB one (under it);
- a markdown page whose front matter is a YAML alias bomb ("billion laughs", 400 bytes);
- a docx whose XML expands to 600 MB (a zip bomb of 0.6 MB), and an xlsx that is not a zip;
- binary junk named .txt and .md, a zero-byte file, a blank page, a PDF without a text layer;
- Shift_JIS, KOI8-R and BOM-less UTF-16 text, a file name that is not UTF-8;
- deeply nested HTML (5,000 levels), and a symlink out of the folder.

One ``sync_sources`` over the folder (drive source, hash embedder so only ingest is
measured), in a fresh data folder; wall time, the peak RSS of this process (the folder is built
in another process, so the figure is the ingest's; the parser worker is capped by its
``RLIMIT_AS``), and per file: indexed, skipped (with reason) or failed (with
reason). Writes bench/results/bench_junk.json and .png.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import common
from common import pyplot, write_results


def build(folder: Path, quick: bool) -> dict[str, str]:
    """Write the hostile folder; {relative path: kind}."""
    kinds: dict[str, str] = {}

    def put(rel: str, data: bytes | str, kind: str) -> None:
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        kinds[rel] = kind

    big = 5 if quick else 50
    line = b"2026-11-30T10:00:00Z GET /api/health 200 0.002s user=svc-monitor\n"
    put("logs/huge.txt", line * (big * 1024 * 1024 // len(line)), "hostile")
    put("logs/medium.txt", line * (4 * 1024 * 1024 // len(line)), "good")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    put("wiki/laughs.md", f"---\n{bomb}title: *i\n---\nBody.\n", "hostile")
    import docx

    real = folder.parent / "real.docx"
    d = docx.Document()
    d.add_paragraph("Quarterly numbers.")
    d.save(real)
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(folder / "bomb.docx", "w", zipfile.ZIP_DEFLATED) as z:
        for item in src.infolist():  # a valid docx whose document.xml expands to 600 MB
            data = src.read(item.filename)
            if item.filename == "word/document.xml":
                pad = b" " * ((60 if quick else 600) * 1024 * 1024)
                data = data.replace(b"<w:body>", b"<w:body>" + pad, 1)
            z.writestr(item, data)
    kinds["bomb.docx"] = "hostile"
    put("not-a-zip.xlsx", b"this is not a workbook", "broken")
    put("junk.txt", bytes(range(1, 32)) * 300 + os.urandom(8000).replace(b"\x00", b"\x01"), "broken")
    put("junk.md", os.urandom(6000), "broken")
    put("empty.txt", b"", "no text")
    put("blank.md", "   \n\n", "no text")
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()  # a page with no text layer (a scan)
    pdf.output(str(folder / "scan.pdf"))
    kinds["scan.pdf"] = "no text"
    put("sjis.txt", "経費精算は月末までに提出してください。領収書が必要です。".encode("shift_jis"), "good")
    put("koi8.txt", "Отпуск согласуется с руководителем за две недели.".encode("koi8_r"), "good")
    put("utf16.txt", "Travel requests need approval two weeks ahead.".encode("utf-16-le"), "good")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9-menu.txt"), "wb") as f:
        f.write(b"Menu of the week.")
    kinds["caf\ufffd-menu.txt"] = "bad name"  # as the report names it
    put("deep.html", "<html><body>" + "<div>" * 5000 + "Deep policy text." + "</div>" * 5000 + "</body></html>", "good")
    outside = folder.parent / "outside-secret.txt"
    outside.write_text("secret", encoding="utf-8")
    os.symlink(outside, folder / "link.txt")
    kinds["link.txt"] = "hostile"
    for i in range(10):
        put(f"wiki/page-{i}.md", f"# Policy {i}\n\nRule {i}: requests are answered within {i + 1} days.\n", "good")
    drive = common.SHARED / "corpus" / "drive"
    if drive.is_dir():
        (folder / "real").mkdir()
        for p in sorted(drive.rglob("*")):
            if p.is_file() and p.suffix in (".docx", ".pptx", ".xlsx", ".pdf") and "reference" not in p.parts:
                shutil.copy(p, folder / "real" / p.name)
                kinds[f"real/{p.name}"] = "good"
    return kinds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    from kb_chatbot.core.settings import Settings, SourceConfig
    from kb_chatbot.index.embedder import HashEmbedder
    from kb_chatbot.ingest.sync import sync_sources

    with tempfile.TemporaryDirectory(prefix="bench-junk-") as tmp:
        folder = Path(tmp) / "drive"
        folder.mkdir()
        # built in a child process: the 600 MB of the bomb never enter this one, so its peak
        # RSS (and the parser worker's, which starts as a copy of it) is the ingest's own
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            kinds = pool.apply(build, (folder, args.quick))
        size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20
        s = Settings(data_dir=Path(tmp) / "data", embedding={"model": "hash"})
        s.config_dir = common.REPO
        src = SourceConfig(name="junk", type="drive", path=folder, default_acl="public",
                           parse_timeout_s=60, parse_memory_mb=2048)
        t = time.perf_counter()
        rep = sync_sources(s, [src], embedder=HashEmbedder())
        wall = time.perf_counter() - t
        [sr] = rep.sources
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    outcome: dict[str, dict[str, str]] = {}
    for f in sr.failures:
        outcome[f.path] = {"outcome": "failed", "reason": f.reason}
    for f in sr.skipped:
        outcome[f.path] = {"outcome": "skipped", "reason": f.reason}
    indexed = sr.added
    for rel, kind in kinds.items():
        outcome.setdefault(rel, {"outcome": "indexed", "reason": ""})["kind"] = kind
    print(f"{len(kinds)} files, {size_mb:.0f} MB on disk: sync {wall:.1f} s, peak RSS {peak_self:.0f} MiB "
          f"(the parser worker is capped at {src.parse_memory_mb} MB); indexed {indexed}, "
          f"skipped {len(sr.skipped)}, failed {len(sr.failures)}")
    for rel in sorted(outcome):
        o = outcome[rel]
        print(f"  {o['outcome']:8s} {o.get('kind', '?'):9s} {rel[:40]:40s} {o['reason'][:90]}")
    out = write_results("bench_junk" + ("-quick" if args.quick else ""), {
        "files": len(kinds), "size_mb": round(size_mb, 1), "wall_s": round(wall, 2),
        "peak_rss_mib": round(peak_self), "worker_memory_cap_mb": src.parse_memory_mb,
        "indexed": indexed, "skipped": len(sr.skipped), "failed": len(sr.failures), "outcome": outcome,
    })
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    groups = ["good", "no text", "broken", "bad name", "hostile"]
    for j, res in enumerate(("indexed", "skipped", "failed")):
        vals = [sum(1 for o in outcome.values() if o.get("kind") == g and o["outcome"] == res) for g in groups]
        ax.bar([i + 0.27 * (j - 1) for i in range(len(groups))], vals, width=0.27, label=res)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("files")
    ax.legend()
    ax.set_title(f"junk folder: {len(kinds)} files, {size_mb:.0f} MB; sync {wall:.0f} s, peak {peak_self:.0f} MiB")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
