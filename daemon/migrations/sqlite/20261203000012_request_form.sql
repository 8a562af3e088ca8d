-- The Excel 様式 of a request (workbook::FormSpec as JSON): which cell holds which field, so a
-- returned workbook can be read without the template. NULL for a request without a form.
ALTER TABLE requests ADD COLUMN form TEXT;
