#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pmoflow_fuzz::workbook(data));
