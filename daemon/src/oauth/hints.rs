//! What an administrator can do when a mail server refuses a token: the usual causes, by the
//! provider that issued it. Appended to the error in logs, the outbox and `pmoflow mail check`.

use super::Provider;

/// The usual causes when Exchange Online, Gmail or another server refuses a token for `protocol`
/// (`"IMAP"` or `"SMTP"`).
pub fn refused(provider: Provider, protocol: &str) -> String {
    match provider {
        Provider::Microsoft => {
            let permission = if protocol == "SMTP" {
                "SMTP.SendAsApp"
            } else {
                "IMAP.AccessAsApp"
            };
            let smtp = if protocol == "SMTP" {
                "SMTP AUTH is disabled for the mailbox (Set-CASMailbox -Identity MAILBOX \
                 -SmtpClientAuthenticationDisabled $false) or for the tenant; "
            } else {
                ""
            };
            format!(
                "Exchange Online usually refuses an app token because: {smtp}the app lacks the \
                 {permission} application permission of \"Office 365 Exchange Online\" with admin \
                 consent; the service principal is not registered in Exchange (New-ServicePrincipal \
                 -AppId APP_ID -ObjectId OBJECT_ID, with the object id of the *Enterprise \
                 application*, not of the app registration); or it has no FullAccess on the mailbox \
                 (Add-MailboxPermission -Identity MAILBOX -User SERVICE_PRINCIPAL -AccessRights \
                 FullAccess). Changes take up to an hour to apply. See docs/mail-providers.md"
            )
        }
        Provider::Google => "Google usually refuses a service-account token because domain-wide \
             delegation is not granted to the service account's client id for the scope \
             https://mail.google.com/ (Admin console → Security → API controls), `subject` is \
             not a mailbox of the domain, or IMAP is off for the user. See docs/mail-providers.md"
            .to_string(),
        Provider::Generic | Provider::LineWorks => format!(
            "the {protocol} server did not accept the token: check that it trusts this token \
             endpoint, that the token's user is the configured username, and the scope. See \
             docs/mail-providers.md"
        ),
    }
}
