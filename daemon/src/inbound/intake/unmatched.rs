//! Why a reply matched no request: what the PMO reads in the held message's detail.

use super::Intake;
use crate::inbound::Inbound;
use crate::inbound::correlate;
use crate::store::StoreError;

impl Intake {
    /// The detail of a reply held as unmatched: no key at all, a subject tag no request has, or
    /// a tag whose request is another addressee's or no longer open (a tag alone matches only an
    /// open request of its sender).
    pub(super) async fn unmatched_detail(&self, msg: &Inbound) -> Result<String, StoreError> {
        const NO_KEYS: &str = "no reply token in the recipient address, no Message-ID of ours";
        let Some(tag) = correlate::find_tag(&msg.subject) else {
            return Ok(format!(
                "no request matches this message ({NO_KEYS}, no subject tag)"
            ));
        };
        let requests = self
            .store
            .requests_by_tag(i64::try_from(tag).unwrap_or(-1))
            .await?;
        let from = msg.from.clone().unwrap_or_default();
        if requests.is_empty() {
            return Ok(format!(
                "no request has the subject tag [#{tag}] ({NO_KEYS})"
            ));
        }
        if let Some(own) = requests.iter().find(|r| r.allowed.contains(&from)) {
            return Ok(format!(
                "the subject tag [#{tag}] names a request of the sender that is {} ({NO_KEYS}; a \
                 subject tag alone matches only an open request)",
                own.status
            ));
        }
        let mut addressees: Vec<&str> = requests.iter().map(|r| r.recipient.as_str()).collect();
        addressees.sort_unstable();
        addressees.dedup();
        Ok(format!(
            "the subject tag [#{tag}] belongs to a request addressed to {}, not to the sender {from} \
             ({NO_KEYS})",
            addressees.join(", ")
        ))
    }
}
