//! What intake makes of a reply beyond reading it: a follow-up to a 【要再回答】 completes the
//! earlier answer, a text-only bounce (qmail) marks its addressee, and a message held because
//! its subject tag is another addressee's says so.

use std::path::Path;

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::{Daemon, cli};
use pmoflow_tests::{
    deliver, expect_done, mail_to, reply_address, step_output, wait_mail, wait_subject,
};

use crate::requests::{gmail_reply, setup};

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_up_completes_the_earlier_answer_and_holds_and_bounces_are_explained() {
    let s = setup("10m", "", "").await;
    let dir = s.project.path();
    let maildir = dir.join("maildir");
    let _d = Daemon::start(dir, "d", &[]);
    let (code, out, err) = cli(dir, &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@").clone();
    let suzuki = mail_to(&mails, "suzuki@").clone();
    let reply = reply_address(&yamada);

    // Yamada answers without the required 総合評価: kept as incomplete, and one 【要再回答】
    // asks for it.
    let first = gmail_reply(
        "yamada@pjmo-a.example.go.jp",
        &reply,
        &yamada,
        "進捗: 80%\n課題: 要員の確保",
        "",
    );
    let out = deliver(dir, &first);
    assert!(out.contains("incomplete_answer (done)"), "{out}");
    let again = wait_subject(&maildir, &["【要再回答】"], 1);
    // His follow-up carries only that field: the answer is the earlier one completed with it.
    let second = gmail_reply(
        "yamada@pjmo-a.example.go.jp",
        &reply_address(&again[0]),
        &again[0],
        "総合評価: 注意",
        "",
    );
    let out = deliver(dir, &second);
    assert!(out.contains("answer (done)"), "{out}");
    assert!(
        out.contains("completes the earlier answer of")
            && out.contains("総合評価 given now; 課題, 進捗 kept from it"),
        "{out}"
    );

    // Yamada writes again with only Suzuki's subject tag: held, and the detail says whose
    // request the tag names.
    let subject = suzuki["subject"].as_str().unwrap();
    let tag = &subject[subject.rfind("[#").unwrap()..];
    let foreign = format!(
        "From: yamada@pjmo-a.example.go.jp\r\nTo: pmo@example.go.jp\r\nSubject: Re: {tag}\r\n\
         Message-ID: <foreign-tag@pjmo-a.example.go.jp>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n総合評価: 良好\r\n"
    );
    let out = deliver(dir, &foreign);
    assert!(out.contains("unmatched (quarantined)"), "{out}");
    assert!(
        out.contains(&format!(
            "the subject tag {tag} belongs to a request addressed to suzuki@pjmo-b.example.go.jp, not to the sender yamada@pjmo-a.example.go.jp"
        )),
        "{out}"
    );

    // Suzuki's mailbox is gone: qmail's text-only report to the plain envelope sender, the
    // original inline. Found by the original's Message-ID; the recipient named in the detail.
    let bounce = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/replies/59-qmail-text-bounce.eml"),
    )
    .unwrap()
    .replace("yamada@pjmo-a.example.go.jp", "suzuki@pjmo-b.example.go.jp")
    .replace(
        "<pmoflow.k7x2m4p6q5r3s5t7v2w4y6z3ab@example.go.jp>",
        suzuki["message_id"].as_str().unwrap(),
    );
    let out = deliver(dir, &bounce);
    assert!(
        out.contains("bounce (done): delivery to suzuki@pjmo-b.example.go.jp failed"),
        "{out}"
    );

    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let out = step_output(&store, &run_id, "ask").await;
    assert_eq!(out[0]["status"], "answered", "{out:#}");
    assert_eq!(out[0]["fields"]["総合評価"], "注意", "{out:#}");
    assert_eq!(out[0]["fields"]["進捗"], 80, "{out:#}");
    assert_eq!(out[0]["fields"]["課題"], "要員の確保", "{out:#}");
    assert_eq!(out[1]["status"], "bounced", "{out:#}");
}
