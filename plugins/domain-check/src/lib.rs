//! `domain-check`: how many days are left before each domain's registration expires (RDAP
//! `events` → `expiration`, or WHOIS text such as JPRS's `[有効期限]` / `[状態] Connected
//! (2027/01/31)`) and before its TLS certificates expire (the leaf and the rest of the chain).
//!
//! A failed check of one domain is reported in that domain's `errors` and does not fail the step;
//! the step fails (retryably) only if every check of every domain failed.

use chrono::NaiveDate;
use pmoflow_plugin_sdk::{
    Context, Descriptor, Guest, Level, StepError, export_plugin, http, log, now_ms, tls, whois,
};
use serde::Deserialize;
use serde_json::{Value, json};

mod parse;
use parse::{parse_rdap, parse_whois, to_jst_date};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    domains: Vec<DomainSpec>,
    /// `{domain}` is replaced with the name.
    #[serde(default = "default_rdap")]
    rdap_url: String,
    /// The WHOIS server for `.jp` names (others use RDAP unless they name a server).
    #[serde(default = "default_whois")]
    jp_whois: String,
    /// Whether to check TLS certificates by default.
    #[serde(default = "yes")]
    check_tls: bool,
}

fn default_rdap() -> String {
    "https://rdap.org/domain/{domain}".into()
}

fn default_whois() -> String {
    "whois.jprs.jp".into()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DomainSpec {
    Name(String),
    Full(Domain),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Domain {
    name: String,
    /// An RDAP URL for this name (overrides `rdap_url`).
    rdap: Option<String>,
    /// A WHOIS server for this name (`host` or `host:port`).
    whois: Option<String>,
    /// `false` to skip, `true` for `name:443`, or the address to connect to.
    tls: Option<Value>,
    /// Passed through to the output (owner, registrar, …).
    #[serde(default)]
    info: Value,
}

const INPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["domains"],
  "additionalProperties": false,
  "properties": {
    "domains": {
      "type": "array",
      "items": {
        "anyOf": [
          { "type": "string", "minLength": 1 },
          {
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "properties": {
              "name": { "type": "string", "minLength": 1 },
              "rdap": { "type": "string" },
              "whois": { "type": "string" },
              "tls": { "type": ["boolean", "string"] },
              "info": {}
            }
          }
        ]
      }
    },
    "rdap_url": { "type": "string" },
    "jp_whois": { "type": "string" },
    "check_tls": { "type": "boolean" }
  }
}"#;

const OUTPUT_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "checked_on": { "type": "string" },
    "domains": { "type": "array" },
    "soonest": {},
    "failed_checks": { "type": "integer" }
  }
}"#;

struct DomainCheck;

impl Guest for DomainCheck {
    fn describe() -> Descriptor {
        Descriptor {
            name: "domain-check".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Days left before domain registrations and TLS certificates expire".into(),
            input_schema: INPUT_SCHEMA.into(),
            output_schema: OUTPUT_SCHEMA.into(),
            capabilities: ["log", "clock", "http", "tls", "whois"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn run(_ctx: Context, input: String) -> Result<String, StepError> {
        let input: Input = serde_json::from_str(&input)
            .map_err(|e| StepError::InvalidInput(format!("domain-check: {e}")))?;
        let today = to_jst_date(now_ms());
        let (mut results, mut checks, mut failures) = (Vec::new(), 0, 0);
        for spec in &input.domains {
            let domain = match spec {
                DomainSpec::Name(n) => Domain {
                    name: n.clone(),
                    rdap: None,
                    whois: None,
                    tls: None,
                    info: Value::Null,
                },
                DomainSpec::Full(d) => Domain {
                    name: d.name.clone(),
                    rdap: d.rdap.clone(),
                    whois: d.whois.clone(),
                    tls: d.tls.clone(),
                    info: d.info.clone(),
                },
            };
            let (result, c, f) = check(&input, &domain, today);
            checks += c;
            failures += f;
            results.push(result);
        }
        if checks > 0 && failures == checks {
            return Err(StepError::Retryable(format!(
                "every check failed ({failures}); first: {}",
                results
                    .iter()
                    .flat_map(|r| r["errors"].as_array().cloned().unwrap_or_default())
                    .next()
                    .and_then(|e| e.as_str().map(String::from))
                    .unwrap_or_default()
            )));
        }
        let soonest = results
            .iter()
            .filter(|r| r["days_left"].is_i64())
            .min_by_key(|r| r["days_left"].as_i64())
            .map(|r| json!({ "name": r["name"], "days_left": r["days_left"] }))
            .unwrap_or(Value::Null);
        Ok(json!({
            "checked_on": today.format("%Y-%m-%d").to_string(),
            "domains": results,
            "soonest": soonest,
            "failed_checks": failures,
        })
        .to_string())
    }
}

/// One domain: its result, how many checks ran and how many failed.
fn check(input: &Input, d: &Domain, today: NaiveDate) -> (Value, u32, u32) {
    let name = d.name.trim().trim_end_matches('.').to_lowercase();
    let mut errors = Vec::new();
    let (mut checks, mut failures) = (1, 0);
    let registration = match registration(input, d, &name) {
        Ok((expires, source, status)) => json!({
            "expires": expires.format("%Y-%m-%d").to_string(),
            "days_left": (expires - today).num_days(),
            "source": source,
            "status": status,
        }),
        Err(e) => {
            log(Level::Warn, &format!("{name}: registration: {e}"));
            failures += 1;
            errors.push(format!("registration: {e}"));
            Value::Null
        }
    };
    let tls_address = match &d.tls {
        Some(Value::Bool(false)) => None,
        Some(Value::String(a)) => Some(a.clone()),
        Some(_) => Some(format!("{name}:443")),
        None if input.check_tls => Some(format!("{name}:443")),
        None => None,
    };
    let tls = match tls_address {
        None => Value::Null,
        Some(address) => {
            checks += 1;
            match tls::peer_certificates(&address, &name) {
                Ok(chain) if !chain.is_empty() => tls_facts(&chain, today),
                Ok(_) => {
                    failures += 1;
                    errors.push("tls: no certificate".to_string());
                    Value::Null
                }
                Err(e) => {
                    log(Level::Warn, &format!("{name}: tls: {e}"));
                    failures += 1;
                    errors.push(format!("tls: {e}"));
                    Value::Null
                }
            }
        }
    };
    let days_left = [
        registration["days_left"].as_i64(),
        tls["days_left"].as_i64(),
    ]
    .into_iter()
    .flatten()
    .min();
    (
        json!({
            "name": name,
            "registration": registration,
            "tls": tls,
            "days_left": days_left,
            "errors": errors,
            "info": d.info,
        }),
        checks,
        failures,
    )
}

fn tls_facts(chain: &[tls::Certificate], today: NaiveDate) -> Value {
    let certs: Vec<Value> = chain
        .iter()
        .map(|c| {
            let not_after = to_jst_date(c.not_after_ms);
            json!({
                "subject": c.subject,
                "issuer": c.issuer,
                "dns_names": c.dns_names,
                "not_after": not_after.format("%Y-%m-%d").to_string(),
                "days_left": (not_after - today).num_days(),
                "serial": c.serial,
                "self_signed": c.subject == c.issuer,
            })
        })
        .collect();
    let leaf = &certs[0];
    // Intermediates matter (a server presenting an expired one breaks clients); self-signed
    // roots do not (clients use their own trust store), so an expired cross-signed root sent
    // along does not raise a false alarm.
    let chain_days_left = chain
        .iter()
        .zip(&certs)
        .skip(1)
        .filter(|(c, _)| c.subject != c.issuer)
        .filter_map(|(_, f)| f["days_left"].as_i64())
        .min();
    let leaf_days = leaf["days_left"].as_i64();
    let days_left = [leaf_days, chain_days_left].into_iter().flatten().min();
    json!({
        "not_after": leaf["not_after"],
        "leaf_days_left": leaf_days,
        "chain_days_left": chain_days_left,
        "days_left": days_left,
        "subject": leaf["subject"],
        "issuer": leaf["issuer"],
        "chain": certs,
    })
}

/// The registration expiry date: from WHOIS for `.jp` names or a named server, else from RDAP.
fn registration(
    input: &Input,
    d: &Domain,
    name: &str,
) -> Result<(NaiveDate, &'static str, String), String> {
    let server = d
        .whois
        .clone()
        .or_else(|| (name.ends_with(".jp") && d.rdap.is_none()).then(|| input.jp_whois.clone()));
    if let Some(server) = server {
        // JPRS answers in Japanese by default; the parser reads both languages.
        let text = whois(&server, name)?;
        return parse_whois(&text).map(|(date, status)| (date, "whois", status));
    }
    let url = d
        .rdap
        .clone()
        .unwrap_or_else(|| input.rdap_url.replace("{domain}", name));
    let resp = http::get(&url, "application/rdap+json, application/json")
        .map_err(|e| format!("RDAP {url}: {}", http::reason(&e)))?;
    if resp.status == 404 {
        return Err(format!(
            "RDAP {url}: the registry does not know {name} (404)"
        ));
    }
    if resp.status != 200 {
        return Err(format!("RDAP {url}: HTTP {}", resp.status));
    }
    let doc: Value =
        serde_json::from_slice(&resp.body).map_err(|e| format!("RDAP {url}: not JSON: {e}"))?;
    parse_rdap(&doc).map(|(date, status)| (date, "rdap", status))
}

export_plugin!(DomainCheck);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whois_forms() {
        let jp = "[ JPRS データベース | JPRS DATABASE ]\n[ドメイン名]                    EXAMPLE.GO.JP\n[状態]                          Connected (2027/01/31)\n";
        assert_eq!(
            parse_whois(jp).unwrap().0,
            NaiveDate::from_ymd_opt(2027, 1, 31).unwrap()
        );
        let en = "[Domain Name]  EXAMPLE.JP\n[Expires on]   2027/02/28\n[Status]  Active\n";
        assert_eq!(
            parse_whois(en).unwrap(),
            (
                NaiveDate::from_ymd_opt(2027, 2, 28).unwrap(),
                "Active".into()
            )
        );
        assert!(parse_whois("No match!!").is_err());
    }
}
