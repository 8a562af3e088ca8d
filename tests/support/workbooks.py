#!/usr/bin/env python3
"""Workbooks made and read by other programs than pmoflow, for tests/it/workbook.rs.

  fill FORM OUT JSON        openpyxl fills cells (keys: defined names or Sheet!A1) and saves
  convert IN OUTDIR FMT     LibreOffice (soffice --headless --convert-to FMT: xlsx, xls)
  inspect FILE              JSON: defined names, validations, protection, print setup, merged
                            cells and the values of every sheet (openpyxl)
  report FILE               JSON: each sheet's rows, number formats, widths and frozen pane
  encrypt IN OUT PASSWORD   a password-protected workbook (msoffcrypto-tool)
  macro IN OUT              IN with a VBA project part, as an .xlsm
  external IN OUT           IN with an external link and a formula using it (cached value kept)
  bomb OUT                  a zip whose sheet inflates to about 1 GiB
  huge OUT                  a well-formed sheet with 1.2 million cells
  corrupt IN OUT            IN cut in half
  archive OUT NAME IN       a ZIP holding IN as 書類/NAME, the name in CP932 without the UTF-8
                            flag (as Windows' built-in ZIP writes it), and a PDF beside it
  ppap OUT IN PASSWORD      a password-protected ZIP holding IN (Info-ZIP's `zip -P`)
  form OUT SHEET LABELS     a blank 様式: sheet SHEET, labels (JSON list) in B2…, values in C2…
  charts FILE               JSON: per sheet, its charts (type, title) and each series' name,
                            category and value references, and the cells they point at
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile


def fill(form, out, values):
    from openpyxl import load_workbook

    wb = load_workbook(form)
    for key, value in json.loads(values).items():
        if "!" in key:
            sheet, cell = key.rsplit("!", 1)
            ws = wb[sheet.strip("'")]
        else:
            dest = list(wb.defined_names[key].destinations)[0]
            ws, cell = wb[dest[0]], dest[1].replace("$", "")
        if isinstance(value, dict) and "date" in value:
            import datetime

            value = datetime.date.fromisoformat(value["date"])
        ws[cell] = value
    wb.save(out)


def convert(src, outdir, fmt):
    profile = tempfile.mkdtemp(prefix="lo-profile-")
    try:
        subprocess.run(
            [
                "soffice",
                f"-env:UserInstallation=file://{profile}",
                "--headless",
                "--convert-to",
                fmt,
                "--outdir",
                outdir,
                src,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=180,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def inspect(path):
    from openpyxl import load_workbook

    wb = load_workbook(path)
    out = {"names": {}, "sheets": {}}
    for name, dn in wb.defined_names.items():
        out["names"][name] = dn.attr_text
    for ws in wb.worksheets:
        cells = {}
        for row in ws.iter_rows():
            for c in row:
                if c.value is not None:
                    cells[c.coordinate] = c.value if not hasattr(c.value, "isoformat") else c.value.isoformat()
        out["sheets"][ws.title] = {
            "state": ws.sheet_state,
            "protected": bool(ws.protection.sheet),
            "merged": sorted(str(r) for r in ws.merged_cells.ranges),
            "validations": [
                {"type": v.type, "sqref": str(v.sqref), "formula1": v.formula1}
                for v in ws.data_validations.dataValidation
            ],
            "orientation": ws.page_setup.orientation,
            "paper": ws.page_setup.paperSize,
            "fit_width": ws.page_setup.fitToWidth,
            "print_area": ws.print_area,
            "header": ws.oddHeader.center.text,
            "unlocked": sorted(
                c.coordinate for row in ws.iter_rows() for c in row if c.protection.locked is False
            ),
            "formats": {
                c.coordinate: c.number_format
                for row in ws.iter_rows()
                for c in row
                if c.number_format != "General"
            },
            "cells": cells,
        }
    print(json.dumps(out, ensure_ascii=False))


def report(path):
    from openpyxl import load_workbook

    wb = load_workbook(path)
    out = {}
    for ws in wb.worksheets:
        rows = [[c.value for c in row] for row in ws.iter_rows()]
        out[ws.title] = {
            "rows": rows,
            "formats": [[c.number_format for c in row] for row in ws.iter_rows(min_row=2)],
            "widths": {k: v.width for k, v in ws.column_dimensions.items()},
            "freeze": ws.freeze_panes,
            "bold_header": all(c.font.bold for c in ws[1]) if ws.max_row else False,
        }
    print(json.dumps(out, ensure_ascii=False, default=str))


def encrypt(src, out, password):
    import msoffcrypto.format.ooxml

    with open(src, "rb") as f:
        file = msoffcrypto.format.ooxml.OOXMLFile(f)
        with open(out, "wb") as o:
            file.encrypt(password, o)


def rewrite(src, out, extra, change=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if change:
                data = change(item.filename, data)
            zout.writestr(item, data)
        for name, data in extra.items():
            zout.writestr(name, data)


def macro(src, out):
    def change(name, data):
        if name == "[Content_Types].xml":
            return data.replace(
                b"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml",
                b"application/vnd.ms-excel.sheet.macroEnabled.main+xml",
            ).replace(
                b"</Types>",
                b'<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/></Types>',
            )
        return data

    # Not a runnable project, just the part an .xlsm carries: it must never be executed or
    # even parsed as code.
    rewrite(src, out, {"xl/vbaProject.bin": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504}, change)


def external(src, out):
    link = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        b'<externalLink xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        b'<externalBook xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" r:id="rId1">'
        b'<sheetNames><sheetName val="Sheet1"/></sheetNames></externalBook></externalLink>'
    )

    def change(name, data):
        if name == "xl/worksheets/sheet1.xml":
            # C8 (運用等経費) becomes a formula into another workbook, with a cached value.
            import re

            return re.sub(
                rb'<c r="C8"([^>]*?)(/>|>.*?</c>)',
                rb'<c r="C8"\1><f>[1]Sheet1!A1</f><v>999</v></c>',
                data,
                count=1,
                flags=re.S,
            )
        return data

    rewrite(src, out, {"xl/externalLinks/externalLink1.xml": link}, change)


def bomb(out):
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
        with z.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as f:
            chunk = b"<c/>" * (1 << 18)
            for _ in range(1024):
                f.write(chunk)


def huge(out):
    from openpyxl import Workbook

    tmp = out + ".tmp.xlsx"
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("様式1")
    row = [1] * 100
    for _ in range(12_000):
        ws.append(row)
    wb.save(tmp)
    os.replace(tmp, out)


def corrupt(src, out):
    data = open(src, "rb").read()
    open(out, "wb").write(data[: len(data) // 2])


def archive(out, name, src):
    # Info-ZIP stores a file name's bytes as they are, and sets the UTF-8 flag only for UTF-8:
    # a name in CP932 on disk is stored as Windows' built-in ZIP writes it.
    work = tempfile.mkdtemp(prefix="archive-")
    try:
        folder = os.path.join(work.encode(), "書類".encode("cp932"))
        os.makedirs(folder)
        shutil.copy(src, os.path.join(folder, name.encode("cp932")))
        with open(os.path.join(folder, "参考資料.pdf".encode("cp932")), "wb") as f:
            f.write(b"%PDF-1.4 not really")
        subprocess.run(
            [b"zip", b"-q", b"-r", os.path.abspath(out).encode(), "書類".encode("cp932")],
            cwd=work,
            check=True,
        )
    finally:
        shutil.rmtree(work.encode())


def ppap(out, src, password):
    work = tempfile.mkdtemp(prefix="ppap-")
    try:
        inner = os.path.join(work, "様式.xlsx")
        shutil.copy(src, inner)
        subprocess.run(["zip", "-q", "-j", "-P", password, os.path.abspath(out), inner], check=True)
    finally:
        shutil.rmtree(work)


def form(out, sheet, labels):
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = sheet
    ws["B1"] = "項目"
    ws["C1"] = "記入欄"
    for i, label in enumerate(json.loads(labels)):
        ws.cell(row=i + 2, column=2, value=label)
    wb.save(out)


def charts(path):
    from openpyxl import load_workbook
    from openpyxl.chart.reader import read_chart  # noqa: F401 (charts are read on load)

    wb = load_workbook(path)
    out = {}

    def ref(r):
        if r is None:
            return None
        return (r.numRef or r.strRef).f if hasattr(r, "numRef") else r.f

    def cells(formula):
        sheet, rng = formula.rsplit("!", 1)
        ws = wb[sheet.strip("'")]
        got = ws[rng.replace("$", "")]
        if not isinstance(got, tuple):
            return [got.value]
        flat = []
        for row in got:
            flat.extend(c.value for c in (row if isinstance(row, tuple) else (row,)))
        return flat

    for ws in wb.worksheets:
        found = []
        for ch in ws._charts:
            title = None
            if ch.title and ch.title.tx and ch.title.tx.rich:
                title = "".join(
                    r.t for p in ch.title.tx.rich.p for r in (p.r or [])
                )
            series = []
            for s in ch.series:
                name = s.tx.strRef.f if s.tx and s.tx.strRef else None
                cat = ref(s.cat)
                val = ref(s.val)
                series.append({
                    "name": name, "name_value": cells(name)[0] if name else None,
                    "categories": cat, "category_values": cells(cat) if cat else [],
                    "values": val, "value_values": cells(val) if val else [],
                })
            found.append({"type": ch.tagname, "title": title, "series": series})
        out[ws.title] = found
    print(json.dumps(out, ensure_ascii=False, default=str))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "fill": fill,
        "convert": convert,
        "inspect": inspect,
        "report": report,
        "encrypt": encrypt,
        "macro": macro,
        "external": external,
        "bomb": bomb,
        "huge": huge,
        "corrupt": corrupt,
        "archive": archive,
        "ppap": ppap,
        "form": form,
        "charts": charts,
    }[cmd](*args)
