//! A real authoritative DNS server for tests: NSD (Debian `nsd`) on a loopback port, serving
//! zones the test writes, started in a temp dir (the system service is never used).

use crate::Succeeds;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running NSD; stopped when dropped.
pub struct Nsd {
    child: Child,
    /// The UDP and TCP port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// A TXT record value in zone-file syntax: split into strings of at most 255 bytes (a DKIM key
/// is longer than one string may be).
pub fn txt(value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap()))
        .collect();
    format!("( {} )", parts.join(" "))
}

impl Nsd {
    /// Serves each `(origin, records)`: `records` in zone-file syntax, relative to the origin
    /// (an SOA and NS are added).
    pub fn start(zones: &[(&str, &str)]) -> Nsd {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let d = dir.path().display();
        let mut conf = format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\nremote-control:\n  control-enable: no\n"
        );
        for (origin, records) in zones {
            std::fs::write(
                dir.path().join(format!("{origin}.zone")),
                format!(
                    "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns1.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n@ IN NS ns1.{origin}.\nns1 IN A 127.0.0.1\n{records}\n"
                ),
            )
            .unwrap();
            conf.push_str(&format!(
                "zone:\n  name: \"{origin}\"\n  zonefile: \"{origin}.zone\"\n"
            ));
        }
        let conf_path = dir.path().join("nsd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let _check = Command::new("nsd-checkconf")
            .arg(&conf_path)
            .succeeds_with("nsd-checkconf (Debian: nsd): nsd.conf");
        let child = Command::new("nsd")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nsd (Debian: nsd)");
        let log = dir.path().join("nsd.log");
        crate::wait::until_blocking("nsd listening", Duration::from_secs(20), || {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "{e}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
            }
        });
        Nsd {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
