//! The store's contract, run on both backends: keyed creation, exclusive leases, fencing,
//! cancellation, listing.

use chrono::{Duration, TimeZone, Utc};
use pmoflow::store::{
    CancelOutcome, Created, Durability, Fence, NewAnswer, NewRequest, NewRun, Recorded, RunFilter,
    RunStatus, StepStatus, StepWrite, Store, StoreError,
};
use pmoflow_tests::backend_tests;
use pmoflow_tests::{Backend, TestDb};
use serde_json::json;

fn new_run<'a>(
    inputs: &'a serde_json::Value,
    key: Option<&'a str>,
    now: chrono::DateTime<Utc>,
) -> NewRun<'a> {
    NewRun {
        workflow_id: "wf",
        version_hash: "h1",
        trigger_kind: "manual",
        dedup_key: key,
        inputs,
        scheduled_at: None,
        now,
        status: RunStatus::Pending,
        wake_at: None,
        error: None,
    }
}

fn step(key: &str, status: StepStatus) -> StepWrite<'_> {
    StepWrite {
        step_key: key,
        step_id: key,
        item_index: None,
        status,
        attempt: 1,
        started_at: None,
        finished_at: None,
        wake_at: None,
        output: None,
        state: None,
        error: None,
        messages: &[],
        requests: &[],
    }
}

async fn contract(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    // Opening again (migrations already applied) is fine.
    Store::open(&db.url, Durability::Fsync)
        .await
        .unwrap()
        .close()
        .await;
    let t0 = Utc.with_ymd_and_hms(2027, 4, 1, 0, 0, 0).unwrap();
    let inputs = json!({"who": "PMO"});

    store
        .save_version("wf", "h1", "wf.toml", "id = \"wf\"", t0)
        .await
        .unwrap();
    store
        .save_version("wf", "h1", "wf.toml", "id = \"wf\"", t0)
        .await
        .unwrap();
    assert_eq!(
        store.load_version("wf", "h1").await.unwrap().unwrap().1,
        "id = \"wf\""
    );
    assert!(store.load_version("wf", "h2").await.unwrap().is_none());

    // Keyed creation: one run per key.
    let a = store
        .create_run(&new_run(&inputs, Some("k1"), t0))
        .await
        .unwrap();
    let b = store
        .create_run(&new_run(&inputs, Some("k1"), t0))
        .await
        .unwrap();
    assert!(matches!(a, Created::New(_)));
    assert_eq!(b, Created::Existing(a.id().to_string()));
    let mut ids = vec![a.id().to_string()];
    for _ in 0..9 {
        ids.push(
            store
                .create_run(&new_run(&inputs, None, t0))
                .await
                .unwrap()
                .id()
                .to_string(),
        );
    }

    // Two daemons claiming at once get disjoint runs, and together all of them.
    let lease = Duration::seconds(30);
    let (x, y) = tokio::join!(
        store.claim_due("node-x", t0, lease, 6),
        store.claim_due("node-y", t0, lease, 6)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<_> = x.iter().chain(y.iter()).map(|r| r.id.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "x={} y={}", x.len(), y.len());
    assert_eq!(x.len() + y.len(), 10, "a run was claimed twice");
    assert!(
        x.iter()
            .all(|r| r.lease_owner.as_deref() == Some("node-x") && r.status == RunStatus::Running)
    );
    // Nothing more is due while the leases are live.
    assert!(
        store
            .claim_due("node-z", t0 + Duration::seconds(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Fencing: a write under a lease the writer does not hold is refused.
    let run = &x[0].id;
    let mine = Fence {
        run_id: run.clone(),
        owner: "node-x".into(),
        lease,
    };
    let theirs = Fence {
        run_id: run.clone(),
        owner: "node-y".into(),
        lease,
    };
    assert!(
        !store
            .write_step(&mine, t0, &step("a", StepStatus::Succeeded), None)
            .await
            .unwrap()
    );
    assert!(matches!(
        store
            .write_step(&theirs, t0, &step("b", StepStatus::Succeeded), None)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(store.get_steps(run).await.unwrap().len(), 1);

    // After the lease expires another daemon takes the run over; the old owner is fenced out.
    let later = t0 + Duration::seconds(31);
    let taken = store.claim_due("node-z", later, lease, 100).await.unwrap();
    assert_eq!(taken.len(), 10);
    assert!(matches!(
        store
            .write_step(&mine, later, &step("c", StepStatus::Succeeded), None)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.park_run(&mine, later).await,
        Err(StoreError::LeaseLost(_))
    ));
    let z = Fence {
        run_id: run.clone(),
        owner: "node-z".into(),
        lease,
    };

    // Cancelling an executing run is a request the executor sees on its next write.
    assert_eq!(
        store.cancel_run(run, later, "test").await.unwrap(),
        CancelOutcome::Requested
    );
    assert!(
        store
            .write_step(&z, later, &step("c", StepStatus::Succeeded), None)
            .await
            .unwrap()
    );
    store
        .finish_run(&z, later, RunStatus::Cancelled, Some("cancelled"))
        .await
        .unwrap();
    assert_eq!(
        store.cancel_run(run, later, "test").await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
    assert_eq!(
        store.cancel_run("missing", later, "test").await.unwrap(),
        CancelOutcome::NotFound
    );

    // Parking gives the lease up until the wake time.
    let other = &taken.iter().find(|r| &r.id != run).unwrap().id;
    let fz = Fence {
        run_id: other.clone(),
        owner: "node-z".into(),
        lease,
    };
    store
        .park_run(&fz, later + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        store.next_wake().await.unwrap(),
        Some(later + Duration::hours(1))
    );
    let parked = store.get_run(other).await.unwrap().unwrap();
    assert_eq!(
        (parked.status, parked.lease_owner),
        (RunStatus::Waiting, None)
    );
    assert_eq!(
        store.cancel_run(other, later, "test").await.unwrap(),
        CancelOutcome::Cancelled
    );

    // Restart: a daemon takes back its own leases at once.
    assert_eq!(store.release_leases("node-z").await.unwrap(), 8);
    assert_eq!(
        store
            .claim_due("node-z", later, lease, 100)
            .await
            .unwrap()
            .len(),
        8
    );

    let cancelled = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Cancelled),
            limit: 100,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 2);
    let by_wf = store
        .list_runs(&RunFilter {
            workflow_id: Some("wf".into()),
            limit: 3,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_wf.len(), 3);
    let events = store.get_events(run).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["cancel_requested", "cancelled"]);
    store.close().await;
}

backend_tests!(store_contract_on_sqlite, store_contract_on_postgres => contract);

/// Answers racing with the end of their step: every answer the store accepted is in what the
/// step reads after marking its requests final, and every later one is refused (kept as
/// `after_close`) — none is accepted unseen. Many answers run concurrently with the finalize.
async fn answers_race_with_the_end_of_their_step(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let t0 = Utc.with_ymd_and_hms(2027, 4, 1, 0, 0, 0).unwrap();
    let inputs = json!({});
    let run = store
        .create_run(&new_run(&inputs, None, t0))
        .await
        .unwrap()
        .id()
        .to_string();
    let lease = Duration::seconds(60);
    assert_eq!(store.claim_due("n", t0, lease, 1).await.unwrap().len(), 1);
    let fence = Fence {
        run_id: run.clone(),
        owner: "n".into(),
        lease,
    };
    let tokens: Vec<String> = (0..4).map(|i| format!("{i:0>26}tok")).collect();
    let requests: Vec<NewRequest> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| NewRequest {
            token: t.clone(),
            workflow_id: "wf".into(),
            kind: "request".into(),
            recipient: format!("lead{i}@example.go.jp"),
            allowed: vec![format!("lead{i}@example.go.jp")],
            tag: 1000 + i as i64,
            message_id: format!("m{i}@example.go.jp"),
            subject: "【要回答】".into(),
            fields: vec!["総合評価".into()],
            required: vec![],
            deadline: None,
            expires_at: t0 + Duration::days(30),
            form: None,
            types: Default::default(),
            record: Some(pmoflow::store::RecordKey {
                subject: format!("S{i}"),
                period: "2027-04".into(),
                name: format!("案件{i}"),
                owner: String::new(),
            }),
        })
        .collect();
    let waiting = StepWrite {
        requests: &requests,
        ..step("ask", StepStatus::Waiting)
    };
    // (`write_step` answers whether the run's cancellation was requested.)
    assert!(!store.write_step(&fence, t0, &waiting, None).await.unwrap());
    let answer = |token: &str, n: usize| NewAnswer {
        token: token.to_string(),
        via: "web".into(),
        from: None,
        message_id: None,
        fields: json!({ "総合評価": format!("v{n}") }),
        text: String::new(),
        attachments: json!([]),
        complete: true,
        form_fields: Vec::new(),
    };
    assert_eq!(
        store
            .record_answer(t0, &answer(&tokens[0], 0), "first")
            .await
            .unwrap(),
        Recorded::Accepted
    );
    assert_eq!(
        store
            .record_answer(t0, &answer(&tokens[0], 0), "first")
            .await
            .unwrap(),
        Recorded::Replay
    );
    // 60 answers spread over the four requests. The step ends once ten are in: the first 40 are
    // paced two milliseconds apart, the next 14 start when the end starts and race with it,
    // and the last 6 come once it has ended — so answers arrive before, during and after the
    // end on any machine, however fast or loaded.
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(0u8);
    let mut answers = Vec::new();
    for n in 1..=60u64 {
        let a = answer(&tokens[n as usize % 4], n as usize);
        let s = store.clone();
        let mut phase = phase_rx.clone();
        answers.push(tokio::spawn(async move {
            match n {
                // pace: two milliseconds apart, before the end.
                1..=40 => tokio::time::sleep(std::time::Duration::from_millis(2 * n)).await,
                41..=54 => {
                    phase.wait_for(|p| *p >= 1).await.unwrap();
                    // pace: spread over the end's transaction.
                    tokio::time::sleep(std::time::Duration::from_micros(300 * (n - 40))).await;
                }
                _ => {
                    phase.wait_for(|p| *p >= 2).await.unwrap();
                }
            }
            s.record_answer(t0, &a, &format!("k{n}")).await.unwrap()
        }));
    }
    let finalize = {
        let store = store.clone();
        let run = run.clone();
        tokio::spawn(async move {
            let tokens = tokens_of(&store, &run).await;
            let eleven = async {
                while store.answers_for(&tokens).await.unwrap().len() < 11 {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(60), eleven)
                .await
                .expect("ten answers recorded within a minute");
            phase_tx.send_replace(1);
            store.finalize_requests(&run, "ask", t0).await.unwrap();
            phase_tx.send_replace(2);
            // What the step reads once its requests are final.
            store.answers_for(&tokens).await.unwrap().len()
        })
    };
    let mut results = Vec::new();
    for t in answers {
        results.push(t.await.unwrap());
    }
    let seen_count = finalize.await.unwrap();
    let accepted = results.iter().filter(|r| **r == Recorded::Accepted).count();
    let closed = results.iter().filter(|r| **r == Recorded::Closed).count();
    assert_eq!(accepted + closed, 60, "{results:?}");
    eprintln!("{backend:?}: {accepted} answers accepted before the step's end, {closed} after");
    assert!(accepted >= 10, "{results:?}");
    // The race really happened: answers arrived after the end as well as before it.
    assert!(
        closed > 0,
        "no answer came after the step's end: the race was not exercised: {results:?}"
    );
    // The first answer plus every accepted one: exactly what the step saw after finalizing.
    assert_eq!(seen_count, accepted + 1, "{results:?}");
    // And exactly what the portfolio recorded: one value per accepted answer, none after.
    let mut recorded = 0;
    for i in 0..4 {
        recorded += store
            .portfolio_history("wf", &format!("S{i}"))
            .await
            .unwrap()
            .len();
    }
    assert_eq!(recorded, accepted + 1, "{results:?}");
    let all = store.answers_for(&tokens).await.unwrap();
    assert_eq!(
        all.len(),
        accepted + 1,
        "a refused answer was stored as an answer"
    );
    // After the end, every answer is refused and the requests are final.
    assert_eq!(
        store
            .record_answer(t0, &answer(&tokens[1], 99), "late")
            .await
            .unwrap(),
        Recorded::Closed
    );
    let rows = store.requests_for_step(&run, "ask").await.unwrap();
    assert!(rows.iter().all(|r| r.final_at.is_some()), "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.status == "answered" || r.status == "closed"),
        "{rows:?}"
    );
    let late = store.inbound_list(None, 200).await.unwrap();
    assert_eq!(
        late.iter()
            .filter(|r| r.outcome.as_deref() == Some("after_close"))
            .count(),
        closed + 1
    );
    store.close().await;
}

async fn tokens_of(store: &Store, run: &str) -> Vec<String> {
    store
        .requests_for_step(run, "ask")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.token)
        .collect()
}

backend_tests!(answers_racing_the_end_of_their_step_on_sqlite, answers_racing_the_end_of_their_step_on_postgres => answers_race_with_the_end_of_their_step);
