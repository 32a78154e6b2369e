//! SMS campaigns end to end: the real hub (HTTP API, outbox, smpp channel) against the
//! scripted SMSC of `tests/sms/smsc.mjs` (npm `smpp`; `scripts/test.sh` installs it), with
//! the campaign engine on a clock the test moves, so a birthday morning, a quiet night or
//! the day before an appointment pass in milliseconds. The background campaign worker is
//! off (`crm.campaigns.worker = false`); the test runs the engine's passes itself.

#[path = "support/smsc.rs"]
mod smsc;
mod support;

use chrono::{DateTime, Duration, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use smsc::Smsc;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use support::*;
use switchboard_core::Role;
use switchboard_crm::campaigns::schedule::ManualClock;
use switchboard_crm::campaigns::{CampaignConfig, Engine};
use uuid::Uuid;

struct World {
    smsc: Smsc,
    th: TestHub,
    db: PgPool,
    clock: ManualClock,
    engine: Engine,
    marketer: Client,
}

async fn world(start: DateTime<Utc>) -> World {
    let smsc = Smsc::start().await;
    let table = smsc::channel(smsc.port, "");
    let th = spawn_hub_with(move |s| {
        s.channels.push(table);
        s.crm = Some(toml::from_str("[campaigns]\nworker = false\ndefault_time_zone = \"Europe/Berlin\"").expect("crm toml"));
    })
    .await;
    let mut smsc = smsc;
    smsc.wait(15, |e| e["event"] == "bound").await;
    let db = th.hub().db().clone();
    let clock = ManualClock::new(start);
    let config = CampaignConfig { default_time_zone: "Europe/Berlin".into(), ..Default::default() };
    let engine = Engine::new(db.clone(), Arc::new(config), Uuid::new_v4()).with_clock(Arc::new(clock.clone()));
    let marketer = user(&th, "mia", &[Role::Marketer], None).await;
    World { smsc, th, db, clock, engine, marketer }
}

struct NewCustomer<'a> {
    name: &'a str,
    phone: &'a str,
    tz: Option<&'a str>,
    lang: Option<&'a str>,
    birthday: Option<&'a str>,
    consent: bool,
    tags: &'a [&'a str],
}

impl Default for NewCustomer<'_> {
    fn default() -> Self {
        NewCustomer { name: "", phone: "", tz: None, lang: None, birthday: None, consent: true, tags: &[] }
    }
}

async fn customer(db: &PgPool, c: NewCustomer<'_>) -> Uuid {
    let tags: Vec<String> = c.tags.iter().map(|t| t.to_string()).collect();
    let id: Uuid = sqlx::query_scalar(
        "insert into customers (name, time_zone, language, birthday, consent_sms, tags) values ($1, $2, $3, $4::date, $5, $6) returning id",
    )
    .bind(c.name)
    .bind(c.tz)
    .bind(c.lang)
    .bind(c.birthday)
    .bind(c.consent)
    .bind(&tags)
    .fetch_one(db)
    .await
    .expect("customer");
    sqlx::query("insert into customer_identities (customer_id, kind, address) values ($1, 'phone', $2)")
        .bind(id)
        .bind(c.phone)
        .execute(db)
        .await
        .expect("identity");
    id
}

async fn create_campaign(m: &Client, body: Value) -> Uuid {
    let (st, c) = m.call("POST", "/api/v1/campaigns", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    let id: Uuid = c["id"].as_str().expect("id").parse().expect("uuid");
    let (st, c) = m.call("POST", &format!("/api/v1/campaigns/{id}/start"), None).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    id
}

/// Waits for `n` more submit_sm at the SMSC; returns (destination, text) of each.
async fn submits(smsc: &mut Smsc, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let e = smsc.wait(20, |e| e["event"] == "submit_sm").await;
        got.push((e["dest"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()));
    }
    got.sort();
    got
}

/// Status (and reason) of each recipient row of a campaign, by customer name.
async fn outcomes(db: &PgPool, campaign: Uuid) -> BTreeMap<String, Vec<(String, String, Option<String>)>> {
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "select c.name, r.occurrence, r.status, r.reason from campaign_recipients r join customers c on c.id = r.customer_id
          where r.campaign_id = $1 order by c.name, r.occurrence",
    )
    .bind(campaign)
    .fetch_all(db)
    .await
    .expect("outcomes");
    let mut m: BTreeMap<String, Vec<(String, String, Option<String>)>> = BTreeMap::new();
    for (name, occ, status, reason) in rows {
        m.entry(name).or_default().push((occ, status, reason));
    }
    m
}

async fn outbox_count(db: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from outbox where channel = 'sms'").fetch_one(db).await.expect("count")
}

/// Runs reconcile until every handed-over row of the campaign has a receipt outcome.
async fn settle(w: &World, campaign: Uuid) {
    eventually(20, || {
        let w = &w;
        async move {
            w.engine.reconcile().await.expect("reconcile");
            let open: i64 =
                sqlx::query_scalar("select count(*) from campaign_recipients where campaign_id = $1 and status in ('sending','sent')")
                    .bind(campaign)
                    .fetch_one(&w.db)
                    .await
                    .expect("open");
            (open == 0).then_some(())
        }
    })
    .await;
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("time")
}

#[tokio::test]
async fn birthdays_go_out_at_nine_local_in_each_zone_the_leap_day_on_the_28th_and_an_edit_sends_no_one_twice() {
    // 2027 is a common year: 29 February birthdays are celebrated on the 28th.
    let mut w = world(utc(2027, 2, 28, 6, 0)).await;
    let db = w.db.clone();
    for (name, phone, tz, bday, consent) in [
        ("Ana Madrid", "+4915110000001", Some("Europe/Madrid"), "1990-02-28", true),
        ("Bob NewYork", "+4915110000002", Some("America/New_York"), "1985-02-28", true),
        ("Lea Leapday", "+4915110000003", Some("Europe/Madrid"), "2000-02-29", true),
        ("Dan NoConsent", "+4915110000004", Some("Europe/Madrid"), "1991-02-28", false),
        ("Eve Yesterday", "+4915110000005", Some("Europe/Madrid"), "1992-02-27", true),
        ("Ola Default", "+4915110000006", None, "1993-02-28", true),
    ] {
        customer(&db, NewCustomer { name, phone, tz, birthday: Some(bday), consent, lang: Some("en"), ..Default::default() }).await;
    }
    let id = create_campaign(
        &w.marketer,
        json!({ "name": "Birthdays", "kind": "birthday", "send_time": "09:00", "grace_minutes": 180,
                "starts_at": "2027-02-20T00:00:00Z",
                "template": { "default": "Happy birthday, {first_name}!" } }),
    )
    .await;

    // 07:59 Madrid/Berlin: nothing is due; Eve's birthday yesterday was missed (the campaign
    // engine was not running) and is recorded as skipped, never sent late.
    w.clock.set(utc(2027, 2, 28, 7, 59));
    let p = w.engine.tick().await.unwrap();
    assert_eq!(p.handed, 0, "{p:?}");
    let o = outcomes(&db, id).await;
    assert_eq!(o["Eve Yesterday"][0].1, "skipped");
    assert!(o["Eve Yesterday"][0].2.as_deref().unwrap_or("").starts_with("missed"), "{o:?}");
    assert!(!o.contains_key("Dan NoConsent"), "no consent: never planned");
    assert_eq!(outbox_count(&db).await, 0);

    // 09:00 in Madrid and Berlin (08:00 UTC): Ana, Lea (29 Feb → 28 Feb) and Ola (the
    // deployment's zone, Berlin) — not Bob, whose morning is six hours later.
    w.clock.set(utc(2027, 2, 28, 8, 0));
    assert_eq!(w.engine.tick().await.unwrap().handed, 3);
    let got = submits(&mut w.smsc, 3).await;
    assert_eq!(got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), vec!["4915110000001", "4915110000003", "4915110000006"], "{got:?}");
    assert!(got.iter().any(|g| g.1 == "Happy birthday, Ana!"), "{got:?}");

    // The marketer edits the running campaign: new text, send time 10:00.
    let (st, b) = w
        .marketer
        .call(
            "PATCH",
            &format!("/api/v1/campaigns/{id}"),
            Some(json!({ "send_time": "10:00", "template": { "default": "Feliz cumple, {first_name}!" } })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // 10:00 Madrid: nobody who had it gets it again.
    w.clock.set(utc(2027, 2, 28, 9, 0));
    assert_eq!(w.engine.tick().await.unwrap().handed, 0);
    // 09:00 New York is no longer Bob's time (the edit moved his planned row to 10:00).
    w.clock.set(utc(2027, 2, 28, 14, 0));
    assert_eq!(w.engine.tick().await.unwrap().handed, 0);
    w.clock.set(utc(2027, 2, 28, 15, 0));
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    let bob = submits(&mut w.smsc, 1).await;
    assert_eq!(bob, vec![("4915110000002".to_string(), "Feliz cumple, Bob!".to_string())]);

    // Later that year and the next morning: still once per customer and year.
    for t in [utc(2027, 2, 28, 23, 0), utc(2027, 3, 1, 9, 0), utc(2027, 3, 2, 9, 0)] {
        w.clock.set(t);
        assert_eq!(w.engine.tick().await.unwrap().handed, 0);
    }
    settle(&w, id).await;
    let o = outcomes(&db, id).await;
    for name in ["Ana Madrid", "Bob NewYork", "Lea Leapday", "Ola Default"] {
        assert_eq!(o[name], vec![("2027".to_string(), "delivered".to_string(), None)], "{name}: {o:?}");
    }
    assert_eq!(outbox_count(&db).await, 4);

    // Results and the CSV export show the same.
    let (st, r) = w.marketer.call("GET", &format!("/api/v1/campaigns/{id}/results"), None).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!((r["totals"]["delivered"].as_i64(), r["totals"]["skipped"].as_i64()), (Some(4), Some(1)), "{r}");
    assert_eq!(r["totals"]["delivery_rate"].as_f64(), Some(1.0));
    let (st, csv, ct) = w.marketer.raw("GET", &format!("/api/v1/campaigns/{id}/recipients.csv"), None, vec![]).await;
    assert_eq!(st, StatusCode::OK);
    assert!(ct.unwrap_or_default().starts_with("text/csv"));
    let csv = csv.as_str().unwrap_or("").to_string();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert!(csv.lines().any(|l| l.contains("Eve Yesterday") && l.contains(",skipped,missed")), "{csv}");
    w.th.stop().await;
}

#[tokio::test]
async fn reminders_follow_reschedules_drop_cancellations_and_never_come_after_the_appointment() {
    let t0 = utc(2026, 12, 7, 9, 0);
    let mut w = world(t0).await;
    let db = w.db.clone();
    let mut appt = BTreeMap::new();
    for (name, phone, hours) in [
        ("Ann Moved", "+4915120000001", 48),
        ("Ben Cancelled", "+4915120000002", 48),
        ("Cid Kept", "+4915120000003", 48),
        ("Dot Soon", "+4915120000004", 30),
    ] {
        let c = customer(&db, NewCustomer { name, phone, tz: Some("Europe/Berlin"), lang: Some("de"), ..Default::default() }).await;
        let a: Uuid = sqlx::query_scalar(
            "insert into appointments (customer_id, starts_at, time_zone, location) values ($1, $2, 'Europe/Berlin', 'Hauptstraße 5') returning id",
        )
        .bind(c)
        .bind(t0 + Duration::hours(hours))
        .fetch_one(&db)
        .await
        .unwrap();
        appt.insert(name, a);
    }
    let id = create_campaign(
        &w.marketer,
        json!({ "name": "Reminder", "kind": "reminder", "offset_minutes": 1440, "late_policy": "send", "starts_at": t0,
                "template": { "default": "Reminder: {appointment.date} {appointment.time}",
                              "variants": { "de": "Erinnerung: Ihr Termin am {appointment.date} um {appointment.time}, {appointment.location}" } } }),
    )
    .await;
    assert_eq!(w.engine.tick().await.unwrap().handed, 0);
    // Ann's appointment moves a day later; Ben cancels.
    sqlx::query("update appointments set starts_at = starts_at + interval '1 day' where id = $1")
        .bind(appt["Ann Moved"])
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("update appointments set status = 'cancelled' where id = $1").bind(appt["Ben Cancelled"]).execute(&db).await.unwrap();

    // Dot's reminder moment (24 h before an appointment 30 h away) comes first.
    w.clock.set(t0 + Duration::hours(6));
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    let dot = submits(&mut w.smsc, 1).await;
    // 2026-12-08 15:00 UTC is 16:00 in Berlin, written the German way.
    assert_eq!(dot, vec![("4915120000004".to_string(), "Erinnerung: Ihr Termin am 08.12.2026 um 16:00, Hauptstraße 5".to_string())]);
    // A day before the original time: Cid only (Ann moved, Ben cancelled).
    w.clock.set(t0 + Duration::hours(24));
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    assert_eq!(submits(&mut w.smsc, 1).await[0].0, "4915120000003");
    let o = outcomes(&db, id).await;
    assert_eq!(o["Ben Cancelled"][0].1, "skipped");
    assert_eq!(o["Ben Cancelled"][0].2.as_deref(), Some("appointment cancelled"));
    assert_eq!(o["Ann Moved"][0].1, "planned");
    // Cid, reminded for t0 + 48 h, moves to t0 + 50 h: a second reminder, for the new time,
    // a day before it; a second move before it goes moves that one, never a third.
    for (now, to) in [(25, 50), (26, 51)] {
        sqlx::query("update appointments set starts_at = $2 where id = $1")
            .bind(appt["Cid Kept"])
            .bind(t0 + Duration::hours(to))
            .execute(&db)
            .await
            .unwrap();
        w.clock.set(t0 + Duration::hours(now));
        assert_eq!(w.engine.tick().await.unwrap().handed, 0);
    }
    w.clock.set(t0 + Duration::hours(27));
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    // 2026-12-09 12:00 UTC is 13:00 in Berlin.
    assert_eq!(
        submits(&mut w.smsc, 1).await,
        vec![("4915120000003".to_string(), "Erinnerung: Ihr Termin am 09.12.2026 um 13:00, Hauptstraße 5".to_string())]
    );
    let o = outcomes(&db, id).await;
    assert_eq!(o["Cid Kept"].len(), 2, "one reminder per time: {:?}", o["Cid Kept"]);
    // Ann's reminder a day before her new time.
    w.clock.set(t0 + Duration::hours(47));
    assert_eq!(w.engine.tick().await.unwrap().handed, 0);
    w.clock.set(t0 + Duration::hours(48));
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    assert_eq!(submits(&mut w.smsc, 1).await[0].0, "4915120000001");

    // Booked inside the window (3 h ahead): sent at once (late_policy = send). Booked 1 h
    // ahead but the engine only runs after the appointment: nothing, skipped with a reason.
    let now = t0 + Duration::hours(50);
    w.clock.set(now);
    let eli =
        customer(&db, NewCustomer { name: "Eli Late", phone: "+4915120000005", tz: Some("Europe/Berlin"), ..Default::default() }).await;
    let fay =
        customer(&db, NewCustomer { name: "Fay Past", phone: "+4915120000006", tz: Some("Europe/Berlin"), ..Default::default() }).await;
    for (c, h) in [(eli, 3), (fay, 1)] {
        sqlx::query("insert into appointments (customer_id, starts_at, time_zone) values ($1, $2, 'Europe/Berlin')")
            .bind(c)
            .bind(now + Duration::hours(h))
            .execute(&db)
            .await
            .unwrap();
    }
    w.engine.plan().await.unwrap();
    w.clock.set(now + Duration::minutes(90));
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    assert_eq!(submits(&mut w.smsc, 1).await[0].0, "4915120000005");
    let o = outcomes(&db, id).await;
    assert_eq!(o["Fay Past"][0].1, "skipped");
    assert_eq!(o["Fay Past"][0].2.as_deref(), Some("appointment time passed"));
    settle(&w, id).await;
    assert_eq!(outbox_count(&db).await, 5);
    w.th.stop().await;
}

#[tokio::test]
async fn quiet_hours_defer_a_broadcast_to_the_recipients_morning() {
    // 21:30 UTC: 22:30 in Berlin (quiet), 16:30 in New York (not).
    let start = utc(2026, 12, 3, 21, 30);
    let mut w = world(start).await;
    let db = w.db.clone();
    customer(&db, NewCustomer { name: "Berta", phone: "+4915130000001", tz: Some("Europe/Berlin"), tags: &["news"], ..Default::default() })
        .await;
    customer(
        &db,
        NewCustomer { name: "Nick", phone: "+4915130000002", tz: Some("America/New_York"), tags: &["news"], ..Default::default() },
    )
    .await;
    customer(&db, NewCustomer { name: "Olga", phone: "+4915130000003", tz: Some("Europe/Berlin"), tags: &["other"], ..Default::default() })
        .await;
    let (st, count) =
        w.marketer.call("POST", "/api/v1/campaigns/audience/count", Some(json!({ "audience": { "tags_any": ["news"] } }))).await;
    assert_eq!((st, count["count"].as_i64()), (StatusCode::OK, Some(2)), "{count}");
    let id = create_campaign(
        &w.marketer,
        json!({ "name": "News", "kind": "broadcast", "audience": { "tags_any": ["news"] }, "starts_at": start,
                "template": { "default": "Our winter sale starts now" } }),
    )
    .await;
    let p = w.engine.tick().await.unwrap();
    assert_eq!((p.handed, p.deferred), (1, 1), "{p:?}");
    assert_eq!(submits(&mut w.smsc, 1).await[0].0, "4915130000002");
    let o = outcomes(&db, id).await;
    assert_eq!(o["Berta"][0].1, "deferred");
    assert_eq!(outbox_count(&db).await, 1, "Berta's message is not in the outbox during the night");
    // 06:59 Berlin: still quiet. 08:00 Berlin (07:00 UTC): sent.
    w.clock.set(utc(2026, 12, 4, 5, 59));
    assert_eq!(w.engine.tick().await.unwrap().handed, 0);
    w.clock.set(utc(2026, 12, 4, 7, 0));
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    assert_eq!(submits(&mut w.smsc, 1).await[0].0, "4915130000001");
    settle(&w, id).await;
    w.engine.tick().await.unwrap();
    let (_, c) = w.marketer.call("GET", &format!("/api/v1/campaigns/{id}"), None).await;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["totals"]["delivered"], 2, "{c}");
    w.th.stop().await;
}

#[tokio::test]
async fn opted_out_customers_and_a_stop_mid_campaign_get_nothing_further() {
    // The STOP is stamped by the database's clock: the campaign runs in the recent past.
    let start = Utc::now() - Duration::hours(7);
    let mut w = world(start).await;
    let db = w.db.clone();
    customer(&db, NewCustomer { name: "Amy", phone: "+4915140000001", tags: &["vip"], ..Default::default() }).await;
    customer(&db, NewCustomer { name: "Sam Stops", phone: "+4915140000002", tags: &["vip"], ..Default::default() }).await;
    customer(&db, NewCustomer { name: "Olaf OptedOut", phone: "+4915140000003", tags: &["vip"], consent: false, ..Default::default() })
        .await;
    let first = create_campaign(
        &w.marketer,
        json!({ "name": "VIP 1", "kind": "broadcast", "audience": { "tags_any": ["vip"] }, "starts_at": start, "quiet_start": null, "quiet_end": null,
                "template": { "default": "Hi {first_name}, VIP night on Friday" } }),
    )
    .await;
    assert_eq!(w.engine.tick().await.unwrap().handed, 2);
    let got = submits(&mut w.smsc, 2).await;
    assert_eq!(got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), vec!["4915140000001", "4915140000002"]);

    // A second broadcast is planned for the evening; Sam replies STOP in between.
    let second = create_campaign(
        &w.marketer,
        json!({ "name": "VIP 2", "kind": "broadcast", "audience": { "tags_any": ["vip"] }, "starts_at": start + Duration::hours(6),
                "quiet_start": null, "quiet_end": null,
                "template": { "default": "Hi {first_name}, VIP night moved to Saturday" } }),
    )
    .await;
    w.engine.tick().await.unwrap();
    assert_eq!(outcomes(&db, second).await["Sam Stops"][0].1, "planned");
    let resp = w.smsc.deliver("stop", "4915140000002", "STOP", None).await;
    assert_eq!(resp["status"], 0);
    // The STOP reply (keyword_reply) goes out; wait for it so it is not mistaken later.
    let reply = w.smsc.wait(10, |e| e["event"] == "submit_sm").await;
    assert_eq!(reply["dest"], "4915140000002");
    w.clock.set(start + Duration::hours(6));
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    assert_eq!(submits(&mut w.smsc, 1).await[0].0, "4915140000001");
    let o = outcomes(&db, second).await;
    assert_eq!(o["Sam Stops"][0].1, "opted_out", "{o:?}");
    assert!(!o.contains_key("Olaf OptedOut"));
    settle(&w, first).await;
    settle(&w, second).await;
    // The first campaign counts Sam's STOP (and his reply is not a plain reply).
    let (_, r) = w.marketer.call("GET", &format!("/api/v1/campaigns/{first}/results"), None).await;
    assert_eq!(r["totals"]["stops"], 1, "{r}");
    assert_eq!(r["totals"]["delivered"], 2, "{r}");
    w.th.stop().await;
}

#[tokio::test]
async fn a_reply_to_a_campaign_is_linked_and_routed_to_a_queue_and_a_test_send_reaches_the_peer() {
    // The reply is stamped by the database's clock: the campaign ran minutes ago.
    let start = Utc::now() - Duration::minutes(10);
    let mut w = world(start).await;
    let db = w.db.clone();
    let admin = user(&w.th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "texts", "entry_rules": [{ "channels": ["sms"] }] })).await;
    let cust = customer(&db, NewCustomer { name: "Rita Reply", phone: "+4915150000001", lang: Some("es"), ..Default::default() }).await;
    let id = create_campaign(
        &w.marketer,
        json!({ "name": "Promo", "kind": "broadcast", "audience": { "customer_ids": [cust] }, "starts_at": start, "quiet_start": null, "quiet_end": null,
                "template": { "default": "Hello {first_name}", "variants": { "es": "Hola {first_name}, ¿qué tal?" } } }),
    )
    .await;
    // Preview for the customer: the Spanish variant, UCS-2 because of ¿.
    let (st, p) = w
        .marketer
        .call(
            "POST",
            "/api/v1/campaigns/preview",
            Some(json!({ "customer_id": cust, "template": { "default": "Hello", "variants": { "es": "Hola {first_name}, ¿qué tal?" } } })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(
        (p["text"].as_str(), p["encoding"].as_str(), p["parts"].as_i64()),
        (Some("Hola Rita, ¿qué tal?"), Some("gsm7"), Some(1)),
        "{p}"
    );
    assert_eq!(w.engine.tick().await.unwrap().handed, 1);
    let sent = submits(&mut w.smsc, 1).await;
    assert_eq!(sent[0].0, "4915150000001");
    let resp = w.smsc.deliver("reply", "4915150000001", "Si, me interesa", None).await;
    assert_eq!(resp["status"], 0);
    let (_, r) = w.marketer.call("GET", &format!("/api/v1/campaigns/{id}/recipients"), None).await;
    let row = &r["items"][0];
    let iid = row["reply_interaction_id"].as_str().expect("reply linked");
    let queued: Option<Uuid> =
        sqlx::query_scalar("select queue_id from interactions where id = $1::uuid").bind(iid).fetch_one(&db).await.unwrap();
    assert!(queued.is_some(), "the reply is an inbox interaction in a queue");
    // Tagged with the campaign it answers when it came in (reports count campaign replies by it).
    let tagged: Option<String> =
        sqlx::query_scalar("select metadata->>'campaign_id' from interactions where id = $1::uuid").bind(iid).fetch_one(&db).await.unwrap();
    assert_eq!(tagged, Some(id.to_string()));
    let (_, res) = w.marketer.call("GET", &format!("/api/v1/campaigns/{id}/results"), None).await;
    assert_eq!(res["totals"]["replies"], 1, "{res}");

    // Test send to the marketer's own number: reaches the peer, not counted as a recipient.
    let (st, t) =
        w.marketer.call("POST", &format!("/api/v1/campaigns/{id}/test-send"), Some(json!({ "phone": "+49 151 5999 9999" }))).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{t}");
    let e = w.smsc.wait(15, |e| e["event"] == "submit_sm").await;
    assert_eq!((e["dest"].as_str(), e["message"].as_str()), (Some("4915159999999"), Some("Hello Alex")));
    let (_, res) = w.marketer.call("GET", &format!("/api/v1/campaigns/{id}/results"), None).await;
    assert_eq!(res["totals"]["total"], 1);
    // Agents may not touch campaigns.
    let agent = user(&w.th, "al", &[Role::Agent], Some(json!({ "sms": 5 }))).await;
    let (st, _) = agent.call("GET", "/api/v1/campaigns", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    w.th.stop().await;
}

#[tokio::test]
async fn two_engines_on_one_database_hand_each_recipient_over_once() {
    let start = utc(2026, 12, 3, 12, 0);
    let mut w = world(start).await;
    let db = w.db.clone();
    let mut rows = Vec::new();
    for i in 0..300 {
        rows.push(format!("+49151600{i:05}"));
    }
    for p in &rows {
        customer(&db, NewCustomer { name: "Many", phone: p, tags: &["all"], ..Default::default() }).await;
    }
    let id = create_campaign(
        &w.marketer,
        json!({ "name": "Everyone", "kind": "broadcast", "audience": { "tags_any": ["all"] }, "starts_at": start,
                "template": { "default": "Hello" } }),
    )
    .await;
    let other = Engine::new(db.clone(), w.engine.config.clone(), Uuid::new_v4()).with_clock(Arc::new(w.clock.clone()));
    let small = |e: &Engine| {
        let mut e = e.clone();
        e.config = Arc::new(CampaignConfig { claim_batch: 7, ..(*e.config).clone() });
        e
    };
    let (a, b) = (small(&w.engine), small(&other));
    w.engine.plan().await.unwrap();
    let (ra, rb) = tokio::join!(a.dispatch(1000), b.dispatch(1000));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.handed + rb.handed, 300, "{ra:?} {rb:?}");
    let got = submits(&mut w.smsc, 300).await;
    let distinct: std::collections::BTreeSet<&String> = got.iter().map(|g| &g.0).collect();
    assert_eq!(distinct.len(), 300);
    settle(&w, id).await;
    let dup: i64 = sqlx::query_scalar("select count(*) - count(distinct recipient) from outbox").fetch_one(&db).await.unwrap();
    assert_eq!(dup, 0);
    w.th.stop().await;
}

#[tokio::test]
async fn a_campaign_is_planned_only_by_the_holder_of_its_planning_lease() {
    let start = utc(2026, 12, 3, 12, 0);
    let w = world(start).await;
    let db = w.db.clone();
    for i in 0..3 {
        customer(&db, NewCustomer { name: "Leased", phone: &format!("+49151700{i:05}"), tags: &["lease"], ..Default::default() }).await;
    }
    let id = create_campaign(
        &w.marketer,
        json!({ "name": "Leased", "kind": "broadcast", "audience": { "tags_any": ["lease"] }, "starts_at": start,
                "template": { "default": "Hello" } }),
    )
    .await;
    let rows = |db: PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from campaign_recipients where campaign_id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    // Another node plans this campaign: this one leaves it alone (and dispatches only).
    let name = format!("campaign-plan:{id}");
    let other = Uuid::new_v4();
    let held = switchboard_core::lease::acquire(&db, &name, other, std::time::Duration::from_secs(30)).await.unwrap().expect("lease");
    assert_eq!(w.engine.plan().await.unwrap(), 0);
    assert_eq!(rows(db.clone()).await, 0);
    let state: String = sqlx::query_scalar("select planning_state from campaigns where id = $1").bind(id).fetch_one(&db).await.unwrap();
    assert_eq!(state, "idle");
    // The other node is gone (its lease released or expired): this one takes over, plans
    // every recipient once under a new fencing token and gives the lease back.
    switchboard_core::lease::release(&db, &held).await.unwrap();
    assert_eq!(w.engine.plan().await.unwrap(), 3);
    assert_eq!(rows(db.clone()).await, 3);
    let token: i64 = sqlx::query_scalar("select token from leases where name = $1").bind(&name).fetch_one(&db).await.unwrap();
    assert_eq!(token, held.token + 1);
    assert!(switchboard_core::lease::holder(&db, &name).await.unwrap().is_none(), "released once planned");
    // The old holder, waking up, is fenced off.
    let mut tx = db.begin().await.unwrap();
    assert!(!switchboard_core::lease::still_held(&mut tx, &name, held.token).await.unwrap());
    tx.rollback().await.unwrap();
    assert_eq!(w.engine.plan().await.unwrap(), 0, "planned once");
    w.th.stop().await;
}

/// A campaign engine that plans only once an hour by itself (and ticks every 200 ms): a
/// reminder that goes out within seconds was planned because something woke it.
const HOURLY_ENGINE: &str = "[campaigns]\nworker = true\ntick_ms = 200\nplan_every_secs = 3600\ndefault_time_zone = \"Europe/Berlin\"";

/// A reminder campaign a day before each appointment, sent even when that is past.
async fn day_ahead_reminder(marketer: &Client, name: &str) -> Uuid {
    create_campaign(
        marketer,
        json!({ "name": name, "kind": "reminder", "offset_minutes": 1440, "late_policy": "send",
                "quiet_start": null, "quiet_end": null, "template": { "default": "See you on {appointment.date}" } }),
    )
    .await
}

#[tokio::test]
async fn an_appointment_booked_on_a_node_without_the_campaign_worker_wakes_another_node_s_engine() {
    // Node A serves the API with no campaign engine; node B runs it, planning only once an
    // hour by itself: B plans the reminder within seconds because A's booking signalled it.
    let smsc = Smsc::start().await;
    let table = smsc::channel(smsc.port, "");
    let table_b = table.clone();
    let th = spawn_hub_with(move |s| {
        s.channels.push(table);
        s.crm = Some(toml::from_str("[campaigns]\nworker = false\ndefault_time_zone = \"Europe/Berlin\"").expect("crm toml"));
    })
    .await;
    let node_b = spawn_node_with(&th.db, move |s| {
        s.channels.push(table_b);
        s.crm = Some(toml::from_str(HOURLY_ENGINE).expect("crm toml"));
    })
    .await;
    let mut smsc = smsc;
    smsc.wait(15, |e| e["event"] == "bound").await;
    let db = th.hub().db().clone();
    let marketer = user(&th, "mia", &[Role::Marketer], None).await;
    let agent = user(&th, "ada", &[Role::Agent], None).await;
    let ivo =
        customer(&db, NewCustomer { name: "Ivo Elsewhere", phone: "+4915120000009", tz: Some("Europe/Berlin"), ..Default::default() })
            .await;
    // Let B's first (periodic) planning pass go by before the campaign exists.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let id = day_ahead_reminder(&marketer, "Reminder across nodes").await;
    let (st, a) = agent
        .call(
            "POST",
            "/api/v1/appointments",
            Some(json!({ "customer_id": ivo, "starts_at": Utc::now() + Duration::hours(2), "time_zone": "Europe/Berlin" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(submits(&mut smsc, 1).await[0].0, "4915120000009");
    let o = outcomes(&db, id).await;
    assert_eq!(o["Ivo Elsewhere"].len(), 1, "{o:?}");
    node_b.stop().await;
    th.stop().await;
}

#[tokio::test]
async fn an_appointment_booked_or_moved_into_the_reminder_window_gets_its_reminder_at_once() {
    // The engine runs in the hub on the real clock and plans only once an hour by itself:
    // a reminder that arrives within seconds was planned because the booking woke it.
    let smsc = Smsc::start().await;
    let table = smsc::channel(smsc.port, "");
    let th = spawn_hub_with(move |s| {
        s.channels.push(table);
        s.crm = Some(toml::from_str(HOURLY_ENGINE).expect("crm toml"));
    })
    .await;
    let mut smsc = smsc;
    smsc.wait(15, |e| e["event"] == "bound").await;
    let db = th.hub().db().clone();
    let marketer = user(&th, "mia", &[Role::Marketer], None).await;
    let agent = user(&th, "ada", &[Role::Agent], None).await;
    let gil =
        customer(&db, NewCustomer { name: "Gil Booked", phone: "+4915120000007", tz: Some("Europe/Berlin"), ..Default::default() }).await;
    let hal =
        customer(&db, NewCustomer { name: "Hal Moved", phone: "+4915120000008", tz: Some("Europe/Berlin"), ..Default::default() }).await;
    // Let the engine's first (periodic) planning pass go by before the campaign exists.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let id = day_ahead_reminder(&marketer, "Reminder at once").await;
    let now = Utc::now();
    // Hal books three days ahead (outside the window): nothing yet.
    let (st, hal_appt) = agent
        .call(
            "POST",
            "/api/v1/appointments",
            Some(json!({ "customer_id": hal, "starts_at": now + Duration::days(3), "time_zone": "Europe/Berlin" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{hal_appt}");
    // Gil books two hours ahead, inside the 24-hour window: the reminder goes at once.
    let (st, a) = agent
        .call(
            "POST",
            "/api/v1/appointments",
            Some(json!({ "customer_id": gil, "starts_at": now + Duration::hours(2), "time_zone": "Europe/Berlin" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(submits(&mut smsc, 1).await[0].0, "4915120000007");
    // Hal's appointment moves to five hours from now: his reminder follows at once.
    let (st, a) = agent
        .call(
            "PATCH",
            &format!("/api/v1/appointments/{}", hal_appt["id"].as_str().expect("id")),
            Some(json!({ "starts_at": now + Duration::hours(5), "time_zone": "Europe/Berlin" })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{a}");
    assert_eq!(submits(&mut smsc, 1).await[0].0, "4915120000008");
    let o = outcomes(&db, id).await;
    assert_eq!(o.len(), 2, "{o:?}");
    for (name, rows) in &o {
        assert_eq!(rows.len(), 1, "{name}: one reminder");
        assert!(matches!(rows[0].1.as_str(), "sending" | "sent" | "delivered"), "{name}: {rows:?}");
    }
    th.stop().await;
}
