//! The network capabilities: `http`, `tls` and `whois`. Each checks its destination against the
//! plugin's grant (`Grant::resolve`) and connects only to the addresses that were checked.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::grant::{Grant, check_addrs};

/// Why a network capability refused or failed. The guest receives the text.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The destination matches no `allow_hosts` entry.
    #[error("{host}:{port} is not in the plugin's allow_hosts")]
    NotAllowed {
        /// Host as asked for.
        host: String,
        /// Port as asked for.
        port: u16,
    },
    /// A loopback or private address reached through a wildcard entry.
    #[error(
        "{host} is a loopback or private address ({ip}); list it exactly in allow_hosts to allow it"
    )]
    Private {
        /// Host as asked for.
        host: String,
        /// The refused address.
        ip: IpAddr,
    },
    /// The name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// Host as asked for.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The name resolved to nothing.
    #[error("{host} has no address")]
    NoAddress {
        /// Host as asked for.
        host: String,
    },
    /// `host:port` could not be read.
    #[error("bad address `{0}`")]
    BadAddress(String),
    /// An empty address.
    #[error("empty address")]
    EmptyAddress,
    /// The port of `host:port` is not a number.
    #[error("bad port in `{0}`")]
    BadPort(String),
    /// No connection could be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting took longer than the plugin's network timeout.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// A WHOIS query that is not one short line.
    #[error("a WHOIS query is one line of at most 256 bytes")]
    BadQuery,
    /// Reading or writing the connection failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (`WHOIS read`, `TLS handshake with …`).
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// An answer over the plugin's `max_response`.
    #[error("the {what} exceeds the {} KiB limit", .max >> 10)]
    TooLarge {
        /// `response`, `WHOIS answer`.
        what: &'static str,
        /// The limit in bytes.
        max: usize,
    },
    /// The whole exchange took longer than the plugin's network timeout.
    #[error("{what} to {target} timed out")]
    Timeout {
        /// `WHOIS query`, `TLS connection`.
        what: &'static str,
        /// Server as asked for.
        target: String,
    },
    /// A TLS server name that is not a DNS name or address.
    #[error("`{0}` is not a valid server name")]
    ServerName(String),
    /// The server sent no certificate.
    #[error("{0} presented no certificate")]
    NoCertificate(String),
    /// A certificate that is not DER X.509.
    #[error("unreadable certificate: {0}")]
    Certificate(String),
    /// The TLS library refused its configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// An HTTP client for one plugin: no proxies, no redirects, and a resolver that applies the
/// grant to every name it resolves.
pub fn http_client(grant: Arc<Grant>) -> Result<reqwest::Client, NetError> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(grant.limits.net_timeout)
        .timeout(grant.limits.net_timeout)
        .user_agent(concat!("pmoflow-plugin/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(crate::egress::CheckedResolver::new(Arc::new(
            move |host: &str, addrs: &[SocketAddr]| {
                check_addrs(host, grant.lists_exactly(host), addrs)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            },
        ))))
        .build()
        .map_err(NetError::Client)
}

/// What went wrong with a request.
#[derive(Debug)]
pub enum FetchError {
    /// Refused by the grant.
    Denied(String),
    /// Too slow.
    Timeout(String),
    /// Body too large.
    TooLarge(String),
    /// Anything else.
    Failed(String),
}

/// A response.
#[derive(Debug)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Performs one request for a plugin.
pub async fn fetch(
    client: &reqwest::Client,
    grant: &Grant,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<Fetched, FetchError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| FetchError::Denied(format!("bad URL `{url}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FetchError::Denied(format!(
            "only http and https URLs are allowed, not `{}`",
            parsed.scheme()
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| FetchError::Denied(format!("URL `{url}` has no host")))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    grant
        .check_host(host, port, &[80, 443])
        .map_err(|e| FetchError::Denied(e.to_string()))?;
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| FetchError::Denied(format!("bad HTTP method `{method}`")))?;
    let mut req = client.request(method, parsed);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if !body.is_empty() {
        req = req.body(body);
    }
    let max = grant.limits.max_response;
    let mut resp = req.send().await.map_err(|e| classify(&e))?;
    if let Some(len) = resp.content_length()
        && len > max as u64
    {
        return Err(FetchError::TooLarge(too_large(max)));
    }
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e))? {
        if out.len() + chunk.len() > max {
            return Err(FetchError::TooLarge(too_large(max)));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Fetched {
        status,
        headers,
        body: out,
    })
}

fn too_large(max: usize) -> String {
    NetError::TooLarge {
        what: "response",
        max,
    }
    .to_string()
}

fn classify(e: &reqwest::Error) -> FetchError {
    if e.is_timeout() {
        return FetchError::Timeout(e.to_string());
    }
    // The resolver's refusal is wrapped in the connect error.
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let refusal = s.downcast_ref::<NetError>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<NetError>())
        });
        if let Some(refusal) = refusal {
            return FetchError::Denied(refusal.to_string());
        }
        source = s.source();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    FetchError::Failed(text)
}

/// Splits `host` or `host:port` (IPv6 in brackets).
pub fn split_address(address: &str, default_port: u16) -> Result<(String, u16), NetError> {
    let address = address.trim();
    let bad_port = || NetError::BadPort(address.to_string());
    if let Some(rest) = address.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| NetError::BadAddress(address.to_string()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad_port())?,
            None => default_port,
        };
        return Ok((h.to_string(), port));
    }
    match address.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| bad_port())?)),
        _ if address.is_empty() => Err(NetError::EmptyAddress),
        _ => Ok((address.to_string(), default_port)),
    }
}

async fn connect(
    host: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<tokio::net::TcpStream, NetError> {
    let mut last = NetError::NoAddress {
        host: host.to_string(),
    };
    for addr in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(source)) => {
                last = NetError::Connect {
                    addr: *addr,
                    source,
                }
            }
            Err(_) => last = NetError::ConnectTimeout(*addr),
        }
    }
    Err(last)
}

/// Sends a WHOIS query and returns the decoded answer.
pub async fn whois(grant: &Grant, server: &str, query: &str) -> Result<String, NetError> {
    if query.contains(['\r', '\n']) || query.len() > 256 {
        return Err(NetError::BadQuery);
    }
    let (host, port) = split_address(server, 43)?;
    let addrs = grant.resolve(&host, port, &[43]).await?;
    let timeout = grant.limits.net_timeout;
    let max = grant.limits.max_response;
    let work = async {
        let mut stream = connect(&host, &addrs, timeout).await?;
        stream
            .write_all(format!("{query}\r\n").as_bytes())
            .await
            .map_err(|source| NetError::Io {
                what: "WHOIS write".into(),
                source,
            })?;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await.map_err(|source| NetError::Io {
                what: "WHOIS read".into(),
                source,
            })?;
            if n == 0 {
                break;
            }
            if out.len() + n > max {
                return Err(NetError::TooLarge {
                    what: "WHOIS answer",
                    max,
                });
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(decode_text(&out))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| NetError::Timeout {
            what: "WHOIS query",
            target: server.to_string(),
        })?
}

/// Decodes text in the encodings Japanese servers use.
pub fn decode_text(bytes: &[u8]) -> String {
    if bytes.contains(&0x1b) {
        let (text, _, _) = encoding_rs::ISO_2022_JP.decode(bytes);
        return text.into_owned();
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_string();
    }
    for enc in [encoding_rs::EUC_JP, encoding_rs::SHIFT_JIS] {
        let (text, had_errors) = enc.decode_without_bom_handling(bytes);
        if !had_errors {
            return text.into_owned();
        }
    }
    String::from_utf8_lossy(bytes).into_owned()
}

/// Facts about one certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// subjectAltName DNS names.
    pub dns_names: Vec<String>,
    /// Validity, ms since the epoch.
    pub not_before_ms: i64,
    /// Validity, ms since the epoch.
    pub not_after_ms: i64,
    /// Serial number, hex.
    pub serial: String,
}

/// Connects with TLS and returns the presented chain, leaf first.
pub async fn peer_certificates(
    grant: &Grant,
    address: &str,
    server_name: &str,
) -> Result<Vec<CertFacts>, NetError> {
    let (host, port) = split_address(address, 443)?;
    let addrs = grant.resolve(&host, port, &[443]).await?;
    let timeout = grant.limits.net_timeout;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|_| NetError::ServerName(server_name.to_string()))?;
    let work = async {
        let stream = connect(&host, &addrs, timeout).await?;
        let connector = tokio_rustls::TlsConnector::from(tls_config()?);
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|source| NetError::Io {
                what: format!("TLS handshake with {address}"),
                source,
            })?;
        let (_, conn) = tls.get_ref();
        let certs = conn
            .peer_certificates()
            .ok_or_else(|| NetError::NoCertificate(address.to_string()))?;
        certs.iter().map(|c| cert_facts(c.as_ref())).collect()
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| NetError::Timeout {
            what: "TLS connection",
            target: address.to_string(),
        })?
}

/// What the host reads from a DER certificate (public for the fuzz targets).
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, NetError> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| NetError::Certificate(e.to_string()))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                dns_names.push(n.to_string());
            }
        }
    }
    let validity = cert.validity();
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        dns_names,
        not_before_ms: validity.not_before.timestamp() * 1000,
        not_after_ms: validity.not_after.timestamp() * 1000,
        serial: cert.raw_serial_as_string(),
    })
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ReportOnly {
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any certificate chain (its facts are the point, not its validity) while still
/// checking that the server holds the key of the certificate it presented.
#[derive(Debug)]
struct ReportOnly {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for ReportOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_encodings() {
        assert_eq!(
            split_address("whois.jprs.jp", 43).unwrap(),
            ("whois.jprs.jp".into(), 43)
        );
        assert_eq!(
            split_address("127.0.0.1:4343", 43).unwrap(),
            ("127.0.0.1".into(), 4343)
        );
        assert_eq!(
            split_address("[::1]:8443", 443).unwrap(),
            ("::1".into(), 8443)
        );
        assert!(split_address("x:y", 43).is_err());
        let (jis, _, _) = encoding_rs::ISO_2022_JP.encode("[状態] Connected (2027/01/31)");
        assert_eq!(decode_text(&jis), "[状態] Connected (2027/01/31)");
        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("有効期限");
        assert_eq!(decode_text(&sjis), "有効期限");
    }
}
