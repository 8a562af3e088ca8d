//! The plugins shipped with pmoflow (`echo`, `domain-check`, `status-digest`), built into the
//! binary by `daemon/build.rs`: the shipped workflows work wherever the binary is, with no
//! checkout, no build directory and nothing installed under `plugins_dir`.
//!
//! A plugin installed under `plugins_dir` with the same name replaces the shipped one (a
//! ministry can update `domain-check` without a new daemon); grants apply to shipped plugins as
//! to any other.

include!(concat!(env!("OUT_DIR"), "/shipped_plugins.rs"));

/// Where the build compiled the guest workspace (`plugins/`, including its test fixtures):
/// `<this dir>/wasm32-wasip2/release/*.wasm`. For the tests and benchmarks that load the
/// fixtures; production code uses the embedded bytes.
#[doc(hidden)]
pub const GUEST_TARGET_DIR: &str = env!("PMOFLOW_GUEST_TARGET_DIR");

/// A shipped plugin: its manifest and its component.
pub struct Shipped {
    /// The manifest (`plugins/<name>/builtin.toml` in the sources).
    pub manifest: super::Manifest,
    /// The component (WebAssembly bytes).
    pub component: &'static [u8],
}

/// The shipped plugins, in name order.
pub fn all() -> Vec<Shipped> {
    let mut out: Vec<Shipped> = SHIPPED
        .iter()
        .map(|(dir, manifest, component)| {
            let mut manifest: super::Manifest = match toml::from_str(manifest) {
                Ok(m) => m,
                // The build embeds the checked-in manifests; a unit test parses each of them.
                Err(e) => panic!("the shipped manifest of `{dir}` does not parse: {e}"),
            };
            manifest.shipped = true;
            Shipped {
                manifest,
                component,
            }
        })
        .collect();
    out.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
    out
}

/// The names of the shipped plugins.
pub fn names() -> Vec<String> {
    all().into_iter().map(|s| s.manifest.name).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn every_shipped_manifest_parses_and_names_its_directory() {
        for (dir, manifest, component) in super::SHIPPED {
            let m: super::super::Manifest = toml::from_str(manifest).unwrap();
            assert_eq!(&m.name, dir);
            assert!(
                m.component.as_os_str().is_empty(),
                "{dir}: no component path"
            );
            assert!(component.starts_with(b"\0asm"), "{dir}: a wasm binary");
        }
        assert_eq!(super::names(), ["domain-check", "echo", "status-digest"]);
    }
}
