//! The front door under load, shared by the door tests and the door benchmark: clients from
//! other loopback addresses and a flood of unknown tokens.

use std::net::IpAddr;
use std::time::Instant;

use tokio::task::JoinHandle;

/// A client whose connections come from loopback address `ip` (127.0.0.0/8 is all local on
/// Linux), redirects not followed.
pub fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// 500 requests to `url` with unknown tokens from 25 addresses, 20 each: half of them look
/// like real ones (an id and a secret), half do not. Each task answers the status and when it
/// came.
pub fn unknown_token_flood(url: &str) -> Vec<JoinHandle<(u16, Instant)>> {
    let mut flood = Vec::new();
    for a in 0..25u8 {
        let client = client_from([127, 0, 0, 2 + a]);
        for i in 0..20u32 {
            let (client, url) = (client.clone(), url.to_string());
            let token = if i % 2 == 0 {
                format!("pmo_{:08x}_{}", u32::from(a) << 8 | i, "0".repeat(40))
            } else {
                format!("pmo_bad{a}x{i}")
            };
            flood.push(tokio::spawn(async move {
                let res = client.get(&url).bearer_auth(&token).send().await.unwrap();
                (res.status().as_u16(), Instant::now())
            }));
        }
    }
    flood
}
