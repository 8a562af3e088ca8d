#!/usr/bin/env python3
"""Writes the shipped example 様式, workflows/templates/様式1_予算要求.xlsx, with openpyxl.

An EXAMPLE form (marked as such on its first row): a ministry replaces it with its own 様式 and
keeps the defined names (or maps its own cells with `cells = { … }` in the workflow). It has
what real 様式 have and pmoflow must keep when it prefills a copy: merged cells, a validation
list kept on a hidden sheet, a decimal validation, a formula, locked cells with sheet
protection, print setup, and one defined name per field.

Usage: python3 tests/support/make_budget_form.py [OUT]
"""
import sys

from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, PatternFill, Protection, Side
from openpyxl.workbook.defined_name import DefinedName
from openpyxl.worksheet.datavalidation import DataValidation

out = sys.argv[1] if len(sys.argv) > 1 else "workflows/templates/様式1_予算要求.xlsx"

wb = Workbook()
ws = wb.active
ws.title = "様式1"
thin = Side(style="thin")
box = Border(left=thin, right=thin, top=thin, bottom=thin)
label_fill = PatternFill("solid", fgColor="DDEBF7")
input_fill = PatternFill("solid", fgColor="FFF2CC")
font = Font(name="游ゴシック", size=11)

ws["A1"] = "【例】様式1　情報システム予算要求内容（概算要求）"
ws["A1"].font = Font(name="游ゴシック", size=14, bold=True)
ws.merge_cells("A1:F1")
ws["A2"] = "※pmoflow に同梱の記入例の様式です（EXAMPLE）。各府省の様式に置き換えてご利用ください。黄色のセルにご記入ください。"
ws["A2"].font = Font(name="游ゴシック", size=9, color="C00000")
ws.merge_cells("A2:F2")

rows = [
    # (row, label, name, input?, number format, height)
    (4, "プロジェクトID", "プロジェクトID", False, None, None),
    (5, "システム名", "システム名", False, None, None),
    (6, "区分", "区分", True, None, None),
    (7, "整備経費（千円）", "整備経費", True, "#,##0", None),
    (8, "運用等経費（千円）", "運用等経費", True, "#,##0", None),
    (9, "当年度予算額（千円）", "前年度予算額", False, "#,##0", None),
    (10, "前年度比（増減額・主な理由）", "前年度比", True, None, 30),
    (11, "積算根拠", "積算根拠", True, None, 60),
    (12, "KPI（成果指標）", "KPI", True, None, 45),
    (13, "共通基盤の利用（○／×）", "共通基盤の利用", True, None, None),
    (14, "要求額合計（千円）", None, False, "#,##0", None),
]
for r, label, name, editable, fmt, height in rows:
    a = ws.cell(row=r, column=1, value=label)
    a.font = Font(name="游ゴシック", size=11, bold=True)
    a.fill = label_fill
    a.border = box
    a.alignment = Alignment(vertical="center", wrap_text=True)
    ws.merge_cells(start_row=r, start_column=1, end_row=r, end_column=2)
    c = ws.cell(row=r, column=3)
    c.font = font
    c.border = box
    c.alignment = Alignment(vertical="top", wrap_text=True)
    if fmt:
        c.number_format = fmt
    if editable:
        c.fill = input_fill
        c.protection = Protection(locked=False)
    for col in range(4, 7):
        ws.cell(row=r, column=col).border = box
    ws.merge_cells(start_row=r, start_column=3, end_row=r, end_column=6)
    if height:
        ws.row_dimensions[r].height = height
    if name:
        wb.defined_names[name] = DefinedName(name, attr_text=f"様式1!$C${r}")

ws["C14"] = "=C7+C8"
ws.column_dimensions["A"].width = 16
ws.column_dimensions["B"].width = 14
for col in "CDEF":
    ws.column_dimensions[col].width = 18

lists = wb.create_sheet("リスト")
for i, v in enumerate(["新規", "改修", "運用"], start=1):
    lists.cell(row=i, column=1, value=v)
lists.sheet_state = "hidden"

kind = DataValidation(type="list", formula1="リスト!$A$1:$A$3", allow_blank=True)
kind.showErrorMessage = True
kind.error = "「新規」「改修」「運用」から選択してください"
kind.errorTitle = "区分"
kind.add("C6")
money = DataValidation(type="decimal", operator="greaterThanOrEqual", formula1="0", allow_blank=True)
money.showErrorMessage = True
money.error = "0以上の金額（千円）を入力してください"
money.add("C7:C8")
shared = DataValidation(type="list", formula1='"○,×"', allow_blank=True)
shared.showErrorMessage = True
shared.add("C13")
for v in (kind, money, shared):
    ws.add_data_validation(v)

notes = wb.create_sheet("記入要領")
for i, line in enumerate(
    [
        "記入要領（例）",
        "1. 黄色のセルに記入してください。プロジェクトID・システム名・当年度予算額は記入済みです。",
        "2. 区分は一覧から選択してください（新規／改修／運用）。",
        "3. 金額は千円単位の数値で記入してください（例: 12000）。",
        "4. 積算根拠には、単価・数量・期間など算出の根拠を記入してください。",
        "5. 記入後、このファイルを依頼メールへの返信に添付してお送りください。",
    ],
    start=1,
):
    notes.cell(row=i, column=1, value=line).font = Font(name="游ゴシック", size=11, bold=(i == 1))
notes.column_dimensions["A"].width = 100

ws.protection.sheet = True
ws.protection.formatCells = False
ws.page_setup.orientation = "landscape"
ws.page_setup.paperSize = ws.PAPERSIZE_A4
ws.page_setup.fitToWidth = 1
ws.page_setup.fitToHeight = 0
ws.sheet_properties.pageSetUpPr.fitToPage = True
ws.print_area = "A1:F14"
ws.oddHeader.center.text = "情報システム予算要求内容"
ws.oddFooter.center.text = "&P / &N"

wb.save(out)
print(out)
