#![no_main]

// libfuzzer-sys makes every panic abort, even one caught on purpose. The workbook reader
// catches calamine's panics on malformed files at its boundary (and refuses the file), so this
// target puts the default hook back: a caught panic is handled as in the daemon, and a panic
// that escapes still aborts through libfuzzer-sys's own `catch_unwind`, a finding.
libfuzzer_sys::fuzz_target!(
    init: {
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| pmoflow_fuzz::workbook(data)
);
