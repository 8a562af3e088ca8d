//! `[[triggers]]`: each entry checked (a webhook, or a schedule: `cron` or `business_day` with
//! `at`, months, zone, calendar and catch-up) and compiled into a [`Trigger`] with a key that
//! changes only when its schedule does.

use std::collections::BTreeSet;

use super::compile::{Ctx, content_hash, duration};
use super::raw::{CalendarKind, RawTrigger, RawWorkflow, toml_to_json};
use super::{Trigger, WebhookTrigger};

const CRON_HINT: &str = "5 fields (min hour dom mon dow), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly";

/// The workflow's scheduled triggers and its webhook trigger, if any.
pub(super) fn compile_triggers(
    cx: &mut Ctx<'_>,
    raw: &RawWorkflow,
    inputs: &BTreeSet<String>,
) -> (Vec<Trigger>, Option<WebhookTrigger>) {
    let mut out = Vec::new();
    let mut webhook: Option<WebhookTrigger> = None;
    for (index, t) in raw.triggers.iter().enumerate() {
        let trig = t.get_ref();
        let errors_before = cx.diags.len();
        if let Some(w) = &trig.webhook {
            if !*w.get_ref() {
                cx.error(
                    w.span(),
                    "`webhook = false` does nothing",
                    Some("remove the trigger, or write webhook = true".into()),
                );
                continue;
            }
            webhook = Some(webhook_trigger(cx, trig, inputs, webhook.is_some()));
            continue;
        }
        if let Some(s) = &trig.secret {
            cx.error(
                s.span(),
                "`secret` belongs to a webhook trigger",
                Some("add webhook = true, or remove `secret`".into()),
            );
        }
        check_rule(cx, t.span(), trig);
        if let Some(trigger) = scheduled(cx, trig, inputs, index, errors_before) {
            out.push(trigger);
        }
    }
    (out, webhook)
}

/// A `webhook = true` entry: no schedule keys, only known inputs, and only one (`another`: an
/// earlier entry was a webhook too).
fn webhook_trigger(
    cx: &mut Ctx<'_>,
    trig: &RawTrigger,
    inputs: &BTreeSet<String>,
    another: bool,
) -> WebhookTrigger {
    let scheduled = [
        trig.cron.as_ref().map(|v| v.span()),
        trig.business_day.as_ref().map(|v| v.span()),
        trig.at.as_ref().map(|v| v.span()),
        trig.months.as_ref().map(|v| v.span()),
        trig.timezone.as_ref().map(|v| v.span()),
        trig.dst.as_ref().map(|v| v.span()),
        trig.calendar.as_ref().map(|v| v.span()),
        trig.on_closed_day.as_ref().map(|v| v.span()),
        trig.catch_up.as_ref().map(|v| v.span()),
        trig.catch_up_window.as_ref().map(|v| v.span()),
        trig.overlap.as_ref().map(|v| v.span()),
        trig.jitter.as_ref().map(|v| v.span()),
    ];
    if let Some(span) = scheduled.into_iter().flatten().next() {
        cx.error(
            span,
            "a webhook trigger has no schedule",
            Some("put the schedule in a [[triggers]] entry of its own".into()),
        );
    }
    if another && let Some(w) = &trig.webhook {
        cx.error(w.span(), "a workflow has at most one webhook trigger", None);
    }
    check_inputs(cx, trig, inputs);
    WebhookTrigger {
        secret: trig.secret.as_ref().map(|s| s.get_ref().clone()),
        inputs: trig
            .inputs
            .iter()
            .map(|(k, v)| (k.get_ref().clone(), toml_to_json(v.get_ref())))
            .collect(),
    }
}

/// A trigger may only override inputs declared under `[inputs]`.
fn check_inputs(cx: &mut Ctx<'_>, trig: &RawTrigger, inputs: &BTreeSet<String>) {
    for key in trig.inputs.keys() {
        if !inputs.contains(key.get_ref()) {
            cx.error(
                key.span(),
                format!("trigger sets unknown input `{}`", key.get_ref()),
                Some("a trigger can only override inputs declared under [inputs]".into()),
            );
        }
    }
}

/// Exactly one of `cron` and `business_day`, with the keys that go with it.
fn check_rule(cx: &mut Ctx<'_>, span: std::ops::Range<usize>, trig: &RawTrigger) {
    match (&trig.cron, &trig.business_day) {
        (Some(expr), None) => {
            if let Err(message) = super::schedule::parse_cron(expr.get_ref()) {
                cx.error(expr.span(), message.to_string(), Some(CRON_HINT.into()));
            }
            if let Some(at) = &trig.at {
                cx.error(
                    at.span(),
                    "`at` goes with `business_day`; a cron expression has its own time",
                    None,
                );
            }
            if let Some(m) = &trig.months {
                cx.error(
                    m.span(),
                    "`months` goes with `business_day`; write the months in the cron expression",
                    None,
                );
            }
        }
        (None, Some(n)) => {
            let v = *n.get_ref();
            if v == 0 || !(-23..=23).contains(&v) {
                cx.error(
                    n.span(),
                    format!("business_day must be 1…23 or -1…-23, got {v}"),
                    Some("1 is the first business day of the month, -1 the last".into()),
                );
            }
            if trig.at.is_none() {
                cx.error(
                    n.span(),
                    "a `business_day` trigger needs `at`",
                    Some("e.g. at = \"09:00\"".into()),
                );
            }
            if let Some(c) = &trig.calendar
                && *c.get_ref() == CalendarKind::None
            {
                cx.error(
                    c.span(),
                    "`business_day` needs a business calendar",
                    Some(
                        "remove `calendar` (jp-gov is implied) or set calendar = \"jp-gov\"".into(),
                    ),
                );
            }
        }
        (Some(expr), Some(_)) => cx.error(
            expr.span(),
            "a trigger has either `cron` or `business_day`, not both",
            None,
        ),
        (None, None) => cx.error(
            span,
            "a trigger needs `cron` or `business_day`",
            Some("e.g. cron = \"0 9 * * 1-5\", or business_day = 1 with at = \"09:00\"".into()),
        ),
    }
}

/// The rest of a scheduled trigger's keys, and the trigger, unless this entry (from
/// `errors_before` on) had errors.
fn scheduled(
    cx: &mut Ctx<'_>,
    trig: &RawTrigger,
    inputs: &BTreeSet<String>,
    index: usize,
    errors_before: usize,
) -> Option<Trigger> {
    let at = trig.at.as_ref().and_then(|at| {
        match chrono::NaiveTime::parse_from_str(at.get_ref(), "%H:%M") {
            Ok(t) => Some(t),
            Err(_) => {
                cx.error(
                    at.span(),
                    format!("invalid time `{}`", at.get_ref()),
                    Some("write 24-hour HH:MM, e.g. \"17:00\"".into()),
                );
                None
            }
        }
    });
    let mut months = Vec::new();
    if let Some(list) = &trig.months {
        for m in list.get_ref() {
            match u32::try_from(*m.get_ref()) {
                Ok(v) if (1..=12).contains(&v) => months.push(v),
                _ => cx.error(
                    m.span(),
                    format!("month must be 1…12, got {}", m.get_ref()),
                    None,
                ),
            }
        }
    }
    if let Some(tz) = &trig.timezone
        && tz.get_ref().parse::<chrono_tz::Tz>().is_err()
    {
        cx.error(
            tz.span(),
            format!("unknown time zone `{}`", tz.get_ref()),
            Some("use an IANA name such as \"Asia/Tokyo\"".into()),
        );
    }
    if let (Some(p), None) = (&trig.on_closed_day, &trig.calendar)
        && trig.business_day.is_none()
    {
        cx.error(
            p.span(),
            "`on_closed_day` needs a calendar",
            Some("add calendar = \"jp-gov\"".into()),
        );
    }
    let catch_up_window = trig.catch_up_window.as_ref().and_then(|w| duration(cx, w));
    let jitter = trig.jitter.as_ref().and_then(|j| duration(cx, j));
    check_inputs(cx, trig, inputs);
    if cx.diags.len() > errors_before {
        return None;
    }
    let calendar = match (
        trig.calendar.as_ref().map(|c| *c.get_ref()),
        &trig.business_day,
    ) {
        (Some(CalendarKind::None), _) => None,
        (Some(c), _) => Some(c),
        (None, Some(_)) => Some(CalendarKind::JpGov),
        (None, None) => None,
    };
    let mut trigger = Trigger {
        key: String::new(),
        cron: trig.cron.as_ref().map(|c| c.get_ref().clone()),
        business_day: trig
            .business_day
            .as_ref()
            .and_then(|n| i32::try_from(*n.get_ref()).ok()),
        at,
        months,
        timezone: trig.timezone.as_ref().map(|c| c.get_ref().clone()),
        dst: trig.dst.as_ref().map(|d| *d.get_ref()).unwrap_or_default(),
        calendar,
        on_closed_day: trig
            .on_closed_day
            .as_ref()
            .map(|d| *d.get_ref())
            .unwrap_or_default(),
        catch_up: trig
            .catch_up
            .as_ref()
            .map(|d| *d.get_ref())
            .unwrap_or_default(),
        catch_up_window,
        overlap: trig
            .overlap
            .as_ref()
            .map(|d| *d.get_ref())
            .unwrap_or_default(),
        jitter,
        inputs: trig
            .inputs
            .iter()
            .map(|(k, v)| (k.get_ref().clone(), toml_to_json(v.get_ref())))
            .collect(),
    };
    // The key changes when the schedule changes (a new schedule starts a new cursor), but not
    // when unrelated parts of the file are edited.
    let identity = serde_json::json!([
        trigger.cron,
        trigger.business_day,
        trigger.at,
        trigger.months,
        trigger.timezone,
        trigger.dst,
        trigger.calendar,
        trigger.on_closed_day
    ]);
    trigger.key = format!("t{index}-{}", &content_hash(&identity.to_string())[..12]);
    Some(trigger)
}
