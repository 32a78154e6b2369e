//! End-to-end tests of the CRM through a running hub: identity resolution across
//! channels and merge, phone normalization errors, concurrent resolution of one new
//! address, CSV import with good and bad rows (and re-import), import jobs resumed after
//! a node stops, multi-address export round trip, paged duplicate suggestions, erasure,
//! tasks, roles.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use switchboard_core::{Channel, CustomerHints, Role};
use uuid::Uuid;

async fn count(th: &TestHub, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(th.hub().db()).await.expect(sql)
}

async fn wait_job(c: &Client, job: &str) -> Value {
    eventually(60, || async {
        let (st, j) = c.call("GET", &format!("/api/v1/customers/import/{job}"), None).await;
        assert_eq!(st, StatusCode::OK, "{j}");
        (j["status"] != "running").then_some(j)
    })
    .await
}

#[tokio::test]
async fn identity_resolution_across_channels_and_merge_make_one_timeline() {
    let th = spawn_hub().await;
    let hub = th.hub().clone();
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;

    // The same phone in national (SMS) and international (voice, SIP URI) form: one customer.
    let sms = hub.ingest(inbound(Channel::Sms, "sms-1", "(202) 555-0143", "Where is my order?")).await.expect("sms");
    let voice = hub.ingest(inbound(Channel::Voice, "call-1", "sip:+12025550143@pbx.example.com", "")).await.expect("voice");
    let phone_customer = sms.customer_id.expect("sms customer");
    assert_eq!(voice.customer_id, Some(phone_customer));

    // The same person writes an email: a second record until someone merges them.
    let mut mail = inbound(Channel::Email, "<m1@example.com>", "Dana Diaz <DANA@Example.COM>", "Order 42");
    mail.hints = CustomerHints { display_name: Some("Dana Diaz".into()), ..Default::default() };
    let mail = hub.ingest(mail).await.expect("email");
    let email_customer = mail.customer_id.expect("email customer");
    assert_ne!(email_customer, phone_customer);

    let (st, tl) = sup.call("GET", &format!("/api/v1/customers/{phone_customer}/timeline"), None).await;
    assert_eq!(st, StatusCode::OK, "{tl}");
    assert_eq!(tl["items"].as_array().map(Vec::len), Some(2));

    let (st, merged) =
        sup.call("POST", &format!("/api/v1/customers/{phone_customer}/merge"), Some(json!({ "other_id": email_customer }))).await;
    assert_eq!(st, StatusCode::OK, "{merged}");
    assert_eq!(merged["name"], "Dana Diaz", "empty name filled from the merged record");
    let addrs: Vec<&str> = merged["identities"].as_array().expect("ids").iter().filter_map(|i| i["address"].as_str()).collect();
    assert!(addrs.contains(&"+12025550143") && addrs.contains(&"dana@example.com"), "{addrs:?}");

    let (_, tl) = sup.call("GET", &format!("/api/v1/customers/{phone_customer}/timeline"), None).await;
    let channels: Vec<&str> = tl["items"].as_array().expect("items").iter().filter_map(|i| i["channel"].as_str()).collect();
    assert_eq!(channels.len(), 3, "{tl}");
    for c in ["sms", "voice", "email"] {
        assert!(channels.contains(&c), "{channels:?}");
    }

    // Later contacts on either address land on the survivor; a chat whose pre-chat form
    // gives the known email is the same customer too.
    let again = hub.ingest(inbound(Channel::Email, "<m2@example.com>", "dana@example.com", "Thanks")).await.expect("email 2");
    assert_eq!(again.customer_id, Some(phone_customer));
    let mut chat = inbound(Channel::Chat, "chat-1", "visitor-77", "hi");
    chat.hints = CustomerHints { email: Some("Dana@example.com".into()), display_name: Some("D.".into()), ..Default::default() };
    let chat = hub.ingest(chat).await.expect("chat");
    assert_eq!(chat.customer_id, Some(phone_customer));

    let card = hub.directory().card(phone_customer).await.expect("card").expect("some card");
    assert_eq!(card["name"], "Dana Diaz");
    assert_eq!(card["last_contacts"].as_array().map(Vec::len), Some(5));
    assert!(card["open_interactions"].as_array().is_some_and(|o| !o.is_empty()));
    assert_eq!(
        count(&th, &format!("select count(*) from audit_log where action = 'customer.merge' and target_id = '{phone_customer}'")).await,
        1
    );
    // The merged record redirects and is no longer listed.
    let (_, other) = sup.call("GET", &format!("/api/v1/customers/{email_customer}"), None).await;
    assert_eq!(other["merged_into"], json!(phone_customer));
    th.stop().await;
}

#[tokio::test]
async fn phone_numbers_are_normalized_and_garbage_is_rejected_with_the_field() {
    let th = spawn_hub().await;
    let agent = user(&th, "alice", &[Role::Agent], Some(json!({}))).await;
    let (st, c) = agent
        .call(
            "POST",
            "/api/v1/customers",
            Some(json!({ "name": "Ann Lee", "identities": [{ "kind": "phone", "address": "(415) 555-0100" }, { "kind": "email", "address": "Ann@Bücher.example" }] })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    let addrs: Vec<&str> = c["identities"].as_array().expect("ids").iter().filter_map(|i| i["address"].as_str()).collect();
    assert!(addrs.contains(&"+14155550100"), "{addrs:?}");
    assert!(addrs.contains(&"ann@xn--bcher-kva.example"), "{addrs:?}");

    let (st, p) = agent
        .call("POST", "/api/v1/customers", Some(json!({ "name": "X", "identities": [{ "kind": "phone", "address": "call me maybe" }] })))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["field"], "identities[0].address");
    let id = c["id"].as_str().expect("id");
    let (st, p) =
        agent.call("POST", &format!("/api/v1/customers/{id}/identities"), Some(json!({ "kind": "phone", "address": "555" }))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["field"], "address");
    // The same number written differently is the same identity.
    let (st, p) = agent
        .call("POST", "/api/v1/customers", Some(json!({ "name": "Y", "identities": [{ "kind": "phone", "address": "+1 415-555-0100" }] })))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");

    // Search by name, phone and email fragments.
    for q in ["ann l", "555-01", "bcher"] {
        let (st, r) = agent.call("GET", &format!("/api/v1/customers?q={q}"), None).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert_eq!(r["items"][0]["id"], c["id"], "{q}: {r}");
    }
    let (st, _) = agent.call("GET", "/api/v1/customers?q=ab", None).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);

    // Roles: agents cannot erase or merge; marketers read and record consent only.
    let (st, _) = agent.call("POST", &format!("/api/v1/customers/{id}/erase"), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let mia = user(&th, "mia", &[Role::Marketer], None).await;
    let (st, _) = mia.call("GET", &format!("/api/v1/customers/{id}"), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, cons) =
        mia.call("POST", &format!("/api/v1/customers/{id}/consent"), Some(json!({ "email": true, "source": "web form" }))).await;
    assert_eq!(st, StatusCode::OK, "{cons}");
    assert_eq!(cons["email"], true);
    assert_eq!(cons["history"][0]["source"], "web form");
    let (st, _) = mia.call("GET", &format!("/api/v1/customers/{id}/timeline"), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = mia.call("POST", &format!("/api/v1/customers/{id}/merge"), Some(json!({ "other_id": Uuid::new_v4() }))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    th.stop().await;
}

#[tokio::test]
async fn concurrent_ingest_from_one_new_address_creates_exactly_one_customer() {
    let th = spawn_hub().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let hub = th.hub().clone();
        tasks.push(tokio::spawn(
            async move { hub.ingest(inbound(Channel::Sms, &format!("burst-{i}"), "+1 (312) 555-0199", "hello")).await },
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let o = t.await.expect("join").expect("ingest");
        ids.insert(o.customer_id.expect("customer resolved"));
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(count(&th, "select count(*) from customers").await, 1);
    assert_eq!(count(&th, "select count(*) from customer_identities").await, 1);
    assert_eq!(count(&th, "select count(distinct customer_id) from interactions where customer_id is not null").await, 1);
    assert_eq!(count(&th, "select count(*) from interactions where customer_id is null").await, 0);
    th.stop().await;
}

const IMPORT: &str = "external_id,name,phone,email,birthday,tags,consent_sms\n\
E1,Ana Ruiz,(202) 555-0101,ana@example.com,1980-02-03,vip;b2b,yes\n\
E2,Ben Ode,+44 20 7946 0958,,,,\n\
,Cy Twombly,,CY@Example.org,,,no\n\
E4,Bad Phone,12ab,,,,\n\
E5,Bad Email,,not-an-email,,,\n\
E6,Bad Birthday,,e6@example.com,1980-13-40,,\n\
,No Key,,,,,\n\
E8,Dee Dee,202.555.0108,,,,maybe\n\
E9,Eve Ng,,eve@example.com,,,\n";

#[tokio::test]
async fn csv_import_keeps_good_rows_reports_bad_ones_and_reimport_adds_no_duplicates() {
    let th = spawn_hub().await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let (st, r, _) = sup.raw("POST", "/api/v1/customers/import", Some("text/csv"), IMPORT.as_bytes().to_vec()).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{r}");
    let job = wait_job(&sup, r["job_id"].as_str().expect("job id")).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["total"], 9);
    assert_eq!(job["done"], 9);
    assert_eq!(job["percent"], 100);
    assert_eq!(job["created"], 4, "{job}");
    assert_eq!(job["rejected"], 5, "{job}");
    let errs: Vec<(u64, String)> = job["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| (e["line"].as_u64().unwrap_or(0), e["field"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(
        errs,
        vec![(5, "phone".into()), (6, "email".into()), (7, "birthday".into()), (8, "".into()), (9, "consent_sms".into())],
        "{job}"
    );
    assert_eq!(count(&th, "select count(*) from customers").await, 4);
    assert_eq!(count(&th, "select count(*) from customer_consent_events where source = 'import'").await, 1);

    // Re-running the same file changes nothing; the CLI entry point reports progress.
    let done = std::sync::Mutex::new(Vec::new());
    let report = switchboard_crm::import_csv(th.hub().db(), IMPORT.as_bytes(), |d, t| done.lock().expect("lock").push((d, t)))
        .await
        .expect("import");
    assert_eq!((report.created, report.updated, report.rejected), (0, 4, 5));
    assert_eq!(done.lock().expect("lock").last(), Some(&(9, 9)));
    assert_eq!(count(&th, "select count(*) from customers").await, 4);
    assert_eq!(count(&th, "select count(*) from customer_identities").await, 5);

    // Ingest from an imported number finds the imported customer.
    let o = th.hub().ingest(inbound(Channel::Sms, "imp-1", "+12025550101", "hi")).await.expect("ingest");
    let ana: Uuid = sqlx::query_scalar("select id from customers where external_id = 'E1'").fetch_one(th.hub().db()).await.expect("ana");
    assert_eq!(o.customer_id, Some(ana));

    // Export and re-import the export: still no duplicates.
    let (st, csv, ct) = sup.raw("GET", "/api/v1/customers/export.csv", None, vec![]).await;
    assert_eq!(st, StatusCode::OK);
    assert!(ct.unwrap_or_default().starts_with("text/csv"));
    let csv = csv.as_str().expect("csv text").to_string();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.contains("Ana Ruiz") && csv.contains("+12025550101") && csv.contains("b2b;vip"), "{csv}");
    let (st, r, _) = sup.raw("POST", "/api/v1/customers/import", Some("text/csv"), csv.into_bytes()).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{r}");
    let job = wait_job(&sup, r["job_id"].as_str().expect("job id")).await;
    assert_eq!((job["created"].as_i64(), job["updated"].as_i64(), job["rejected"].as_i64()), (Some(0), Some(4), Some(0)), "{job}");
    assert_eq!(count(&th, "select count(*) from customers").await, 4);

    // A header with an unknown column fails the job with a clear reason; wrong type is 400.
    let (st, r, _) = sup.raw("POST", "/api/v1/customers/import", Some("text/csv"), b"name,shoe\nA,42\n".to_vec()).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let job = wait_job(&sup, r["job_id"].as_str().expect("job id")).await;
    assert_eq!(job["status"], "failed");
    assert!(job["failure"].as_str().unwrap_or("").contains("shoe"), "{job}");
    let (st, _, _) = sup.raw("POST", "/api/v1/customers/import", Some("application/json"), b"{}".to_vec()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    th.stop().await;
}

#[tokio::test]
async fn erase_scrubs_personal_data_and_keeps_statistics() {
    let th = spawn_hub().await;
    let hub = th.hub().clone();
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let mut item = inbound(Channel::Email, "<e1@example.com>", "zoe@example.com", "My card number is 4111 1111");
    item.subject = Some("Private matter".into());
    item.hints.display_name = Some("Zoe Zed".into());
    let o = hub.ingest(item).await.expect("ingest");
    let id = o.customer_id.expect("customer");
    let (st, _) = sup.call("POST", &format!("/api/v1/customers/{id}/notes"), Some(json!({ "body": "Lives at 1 Main St" }))).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, a) = sup
        .call(
            "POST",
            "/api/v1/appointments",
            Some(json!({ "customer_id": id, "local_start": "2026-12-01T10:30", "time_zone": "Europe/Madrid", "location": "Home visit, 1 Main St", "kind": "service_visit" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["starts_at"], "2026-12-01T09:30:00Z");
    assert_eq!(a["local_start"], "2026-12-01T10:30");

    let (st, export) = sup.call("GET", &format!("/api/v1/customers/{id}/privacy-export"), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(export["customer"]["name"], "Zoe Zed");
    assert_eq!(export["interactions"][0]["messages"][0]["body"], "My card number is 4111 1111");
    assert_eq!(export["notes"][0]["body"], "Lives at 1 Main St");

    let (st, r) = sup.call("POST", &format!("/api/v1/customers/{id}/erase"), None).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let (_, export) = sup.call("GET", &format!("/api/v1/customers/{id}/privacy-export"), None).await;
    assert_eq!(export["customer"]["name"], "");
    assert!(export["customer"]["erased_at"].is_string());
    assert_eq!(export["identities"], json!([]));
    assert_eq!(export["notes"], json!([]));
    assert_eq!(export["appointments"][0]["location"], "");
    assert_eq!(export["interactions"][0]["messages"][0]["body"], "[erased]");
    assert_eq!(export["interactions"][0]["subject"], Value::Null);
    // Statistics survive: the interaction row with channel, status and timestamps.
    assert_eq!(count(&th, &format!("select count(*) from interactions where customer_id = '{id}' and channel = 'email'")).await, 1);
    assert_eq!(count(&th, "select count(*) from messages where body like '%4111%'").await, 0);
    assert_eq!(count(&th, &format!("select count(*) from audit_log where action = 'customer.erase' and target_id = '{id}'")).await, 1);
    let (st, _) = sup.call("POST", &format!("/api/v1/customers/{id}/erase"), None).await;
    assert_eq!(st, StatusCode::CONFLICT);
    // The address is free again: a new contact is a new customer.
    let o2 = hub.ingest(inbound(Channel::Email, "<e2@example.com>", "zoe@example.com", "hello again")).await.expect("ingest");
    assert_ne!(o2.customer_id, Some(id));
    th.stop().await;
}

#[tokio::test]
async fn follow_up_tasks_inbox_and_duplicate_suggestions() {
    let th = spawn_hub().await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let alice = user(&th, "alice", &[Role::Agent], Some(json!({}))).await;
    let bruno = user(&th, "bruno", &[Role::Agent], Some(json!({}))).await;
    let mk = |n: &str| json!({ "name": n, "birthday": "1990-05-06" });
    let (_, a) = sup.call("POST", "/api/v1/customers", Some(mk("Jo  Smith"))).await;
    let (_, b) = sup.call("POST", "/api/v1/customers", Some(mk("jo smith"))).await;
    let (st, d) = sup.call("GET", "/api/v1/customers/duplicates", None).await;
    assert_eq!(st, StatusCode::OK, "{d}");
    let group = &d["items"][0];
    assert_eq!(group["reason"], "same name and birthday");
    let ids: Vec<&Value> = group["customers"].as_array().expect("customers").iter().map(|c| &c["id"]).collect();
    assert!(ids.contains(&&a["id"]) && ids.contains(&&b["id"]), "{d}");

    let (st, t) = sup
        .call(
            "POST",
            "/api/v1/tasks",
            Some(json!({ "agent_id": alice.agent_id, "customer_id": a["id"], "kind": "call_back", "title": "Call back about invoice", "due_at": "2026-12-01T09:00:00Z" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let (st, mine) = alice.call("GET", "/api/v1/tasks?agent_id=me", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(mine["items"][0]["title"], "Call back about invoice");
    assert_eq!(mine["items"][0]["customer_name"], "Jo  Smith");
    let (_, theirs) = bruno.call("GET", "/api/v1/tasks?agent_id=me", None).await;
    assert_eq!(theirs["items"], json!([]));
    let (st, _) = bruno.call("GET", &format!("/api/v1/tasks?agent_id={}", alice.agent_id.expect("agent")), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = bruno.call("PATCH", &format!("/api/v1/tasks/{}", t["id"].as_str().expect("id")), Some(json!({ "done": true }))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, done) = alice.call("PATCH", &format!("/api/v1/tasks/{}", t["id"].as_str().expect("id")), Some(json!({ "done": true }))).await;
    assert_eq!(st, StatusCode::OK);
    assert!(done["done_at"].is_string());
    let (_, open) = alice.call("GET", "/api/v1/tasks?agent_id=me", None).await;
    assert_eq!(open["items"], json!([]));

    // Route docs are in the OpenAPI document.
    let (_, doc) = sup.call("GET", "/api/openapi.json", None).await;
    assert!(doc["paths"]["/api/v1/customers/{id}/merge"]["post"].is_object());
    th.stop().await;
}

async fn job_row(th: &TestHub, job: Uuid) -> (String, i64, i64, i64, i64, i64, i32, Option<String>) {
    sqlx::query_as("select status, total, done, created, updated, rejected, resumed, failure from crm_import_jobs where id = $1")
        .bind(job)
        .fetch_one(th.hub().db())
        .await
        .expect("job row")
}

#[tokio::test]
async fn import_jobs_left_running_by_a_stopped_node_are_resumed_where_they_stopped() {
    let th = spawn_hub().await;
    let db = th.hub().db().clone();
    let header = "external_id,name,phone\n";
    let rows = [
        "R1,Rae One,(202) 555-0111",
        "R2,Rae Two,(202) 555-0112",
        "R3,Rae Three,(202) 555-0113",
        "R4,Rae Four,bad",
        "R5,Rae Five,(202) 555-0115",
    ];
    let file = format!("{header}{}\n", rows.join("\n"));

    // A node crashed after committing the first batch (two rows) of this job: the rows and
    // the job's progress are in the database, the job still says running.
    let first = format!("{header}{}\n", rows[..2].join("\n"));
    switchboard_crm::import_csv(&db, first.as_bytes(), |_, _| {}).await.expect("first batch");
    let crashed = switchboard_crm::jobs::create_job(&db, None, file.as_bytes()).await.expect("job");
    sqlx::query("update crm_import_jobs set total = 5, done = 2, created = 2 where id = $1")
        .bind(crashed)
        .execute(&db)
        .await
        .expect("progress");
    // A job from before imports were resumable: no file kept.
    let old: Uuid = sqlx::query_scalar("insert into crm_import_jobs default values returning id").fetch_one(&db).await.expect("old job");
    // A job a live worker is running (it holds the job's lock).
    let held = switchboard_crm::jobs::create_job(&db, None, b"external_id,name\nH1,Held One\n").await.expect("held job");
    let mut worker = db.acquire().await.expect("conn").detach();
    sqlx::query("select pg_advisory_lock($1, hashtext($2::text))")
        .bind(switchboard_crm::jobs::IMPORT_LOCK_NAMESPACE)
        .bind(held)
        .execute(&mut worker)
        .await
        .expect("lock");

    // Another node starts: it claims the orphans while starting.
    let node = spawn_node(&th.db).await;
    let (status, .., failure) = job_row(&th, old).await;
    assert_eq!(status, "failed");
    assert_eq!(failure.as_deref(), Some(switchboard_crm::jobs::NO_DATA_REASON));
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let job = wait_job(&sup, &crashed.to_string()).await;
    assert_eq!(job["status"], "done", "{job}");
    // Resumed after row 2: rows 3 and 5 created, row 4 rejected, rows 1-2 not redone
    // (a restart from the top would count them as updated).
    let (_, total, done, created, updated, rejected, resumed, _) = job_row(&th, crashed).await;
    assert_eq!((total, done, created, updated, rejected, resumed), (5, 5, 4, 0, 1, 1));
    assert_eq!(job["errors"][0]["line"], 5, "{job}");
    assert_eq!(job["resumed"], 1, "{job}");
    assert_eq!(count(&th, "select count(*) from customers where external_id like 'R%'").await, 4);
    assert_eq!(count(&th, &format!("select count(*) from crm_import_job_data where job_id = '{crashed}'")).await, 0, "file dropped");

    // The held job was left to its worker...
    let (status, .., resumed, _) = job_row(&th, held).await;
    assert_eq!((status.as_str(), resumed), ("running", 0));
    assert_eq!(count(&th, "select count(*) from customers where external_id = 'H1'").await, 0);
    // ...and once that worker is gone, the next node to start finishes it.
    sqlx::Connection::close(worker).await.expect("worker gone");
    let node2 = spawn_node(&th.db).await;
    let job = wait_job(&sup, &held.to_string()).await;
    assert_eq!((job["status"].as_str(), job["created"].as_i64()), (Some("done"), Some(1)), "{job}");
    node2.stop().await;
    node.stop().await;
    th.stop().await;
}

#[tokio::test]
async fn duplicate_suggestions_are_paged_and_groups_disappear_once_merged() {
    let th = spawn_hub().await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let mk = |name: &str, ids: Value, birthday: Option<&str>| json!({ "name": name, "identities": ids, "birthday": birthday });
    let mut ids = std::collections::HashMap::new();
    for (name, idents, birthday) in [
        ("Jo Ann", json!([{ "kind": "email", "address": "Jo.Ann+shop@example.com" }]), None),
        ("Joann", json!([{ "kind": "email", "address": "joann@example.com" }]), None),
        ("Pat UK", json!([{ "kind": "phone", "address": "+44 20 7946 0958" }]), None),
        ("Pat US", json!([{ "kind": "phone", "address": "+1 207 946 0958" }]), None),
        ("Lee Park", json!([]), Some("1985-03-04")),
        ("lee  park", json!([]), Some("1985-03-04")),
        ("Lee Park", json!([]), Some("1985-03-05")),
        (
            "Other One",
            json!([{ "kind": "email", "address": "other1@example.com" }, { "kind": "phone", "address": "(202) 555-0101" }]),
            None,
        ),
        (
            "Other Two",
            json!([{ "kind": "email", "address": "other2@example.com" }, { "kind": "phone", "address": "(202) 555-0102" }]),
            None,
        ),
    ] {
        let (st, c) = sup.call("POST", "/api/v1/customers", Some(mk(name, idents, birthday))).await;
        assert_eq!(st, StatusCode::CREATED, "{c}");
        ids.insert(c["id"].as_str().expect("id").to_string(), name.to_string());
    }

    // One group per page, followed to the end.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let (st, page) = sup.call("GET", &format!("/api/v1/customers/duplicates?limit=1&after={after}"), None).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        for g in page["items"].as_array().expect("items") {
            let mut names: Vec<String> =
                g["customers"].as_array().expect("customers").iter().map(|c| ids[c["id"].as_str().expect("id")].clone()).collect();
            names.sort();
            groups.push((g["reason"].as_str().expect("reason").to_string(), names));
        }
        match page["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    groups.sort();
    assert_eq!(
        groups,
        vec![
            ("same email".to_string(), vec!["Jo Ann".to_string(), "Joann".to_string()]),
            ("same name and birthday".to_string(), vec!["Lee Park".to_string(), "lee  park".to_string()]),
            ("same phone number".to_string(), vec!["Pat UK".to_string(), "Pat US".to_string()]),
        ]
    );

    // Merged, the email group is no longer suggested, and its key leaves the work list.
    let jo = ids.iter().find(|(_, n)| *n == "Jo Ann").map(|(id, _)| id.clone()).expect("jo");
    let joann = ids.iter().find(|(_, n)| *n == "Joann").map(|(id, _)| id.clone()).expect("joann");
    let (st, m) = sup.call("POST", &format!("/api/v1/customers/{jo}/merge"), Some(json!({ "other_id": joann }))).await;
    assert_eq!(st, StatusCode::OK, "{m}");
    let (_, page) = sup.call("GET", "/api/v1/customers/duplicates", None).await;
    let reasons: Vec<&str> = page["items"].as_array().expect("items").iter().filter_map(|g| g["reason"].as_str()).collect();
    assert_eq!(reasons.len(), 2, "{page}");
    assert!(!reasons.contains(&"same email"), "{page}");
    assert_eq!(page["next_after"], Value::Null);
    assert_eq!(count(&th, "select count(*) from crm_duplicate_keys where reason = 'email'").await, 0);

    let (st, p) = sup.call("GET", "/api/v1/customers/duplicates?after=-1", None).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["field"], "after");
    th.stop().await;
}

#[tokio::test]
async fn csv_export_holds_every_phone_and_email_and_imports_back() {
    let th = spawn_hub().await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let (st, c) = sup
        .call(
            "POST",
            "/api/v1/customers",
            Some(json!({ "name": "Multi Contact", "external_id": "M1", "identities": [
                { "kind": "phone", "address": "(415) 555-0101" }, { "kind": "phone", "address": "(415) 555-0102" },
                { "kind": "email", "address": "multi@example.com" }, { "kind": "email", "address": "m.c@example.org" },
                { "kind": "chat", "address": "visitor-9" }] })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    let id = c["id"].as_str().expect("id").to_string();
    let (st, _) = sup
        .call(
            "POST",
            "/api/v1/customers",
            Some(json!({ "name": "Single", "identities": [{ "kind": "phone", "address": "(415) 555-0199" }] })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);

    let (st, csv, _) = sup.raw("GET", "/api/v1/customers/export.csv", None, vec![]).await;
    assert_eq!(st, StatusCode::OK);
    let csv = csv.as_str().expect("csv").to_string();
    // No cell of these rows needs CSV quoting, so splitting on commas reads them.
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let multi: Vec<&str> = csv.lines().find(|l| l.starts_with(id.as_str())).expect("multi row").split(',').collect();
    assert_eq!(multi[col("phone")], "+14155550101;+14155550102", "{csv}");
    assert_eq!(multi[col("email")], "m.c@example.org;multi@example.com", "{csv}");

    // Lose the second number and address, then import the export: they come back, on the
    // same customer, and nothing is created or rejected.
    let before = count(&th, "select count(*) from customer_identities").await;
    for addr in ["+14155550102", "multi@example.com"] {
        let identity: Uuid = sqlx::query_scalar("select id from customer_identities where address = $1")
            .bind(addr)
            .fetch_one(th.hub().db())
            .await
            .expect("identity");
        let (st, _) = sup.call("DELETE", &format!("/api/v1/customers/{id}/identities/{identity}"), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
    }
    assert_eq!(count(&th, "select count(*) from customer_identities").await, before - 2);
    let (st, r, _) = sup.raw("POST", "/api/v1/customers/import", Some("text/csv"), csv.into_bytes()).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{r}");
    let job = wait_job(&sup, r["job_id"].as_str().expect("job id")).await;
    assert_eq!((job["created"].as_i64(), job["updated"].as_i64(), job["rejected"].as_i64()), (Some(0), Some(2), Some(0)), "{job}");
    assert_eq!(count(&th, "select count(*) from customer_identities").await, before);
    assert_eq!(count(&th, &format!("select count(*) from customer_identities where customer_id = '{id}'")).await, 5);
    th.stop().await;
}

/// With `crm.default_region = "DE"`: a German mobile written nationally and a Chinese one
/// written internationally are stored in E.164 with every digit (`+4915177777777` once lost
/// its `1`, `+86` mobiles were refused); the same numbers written any other way — and an
/// SMS from them — find the same customers.
#[tokio::test]
async fn international_numbers_keep_their_digits_and_match_existing_customers() {
    let th = spawn_hub_with(|s| s.crm = Some(toml::from_str("default_region = \"DE\"").expect("toml"))).await;
    let agent = user(&th, "alice", &[Role::Agent], Some(json!({}))).await;
    let mut ids = Vec::new();
    for (name, raw, want) in [("Jonas", "0151 77777777", "+4915177777777"), ("Li Wei", "+86 138 1234 5678", "+8613812345678")] {
        let (st, c) = agent
            .call("POST", "/api/v1/customers", Some(json!({ "name": name, "identities": [{ "kind": "phone", "address": raw }] })))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{c}");
        assert_eq!(c["identities"][0]["address"], want, "{raw}");
        ids.push(c["id"].clone());
    }
    // The same numbers in other spellings are the same identities.
    for (raw, k) in [("+49 151 77777777", 0), ("0049 (0)151-7777-7777", 0), ("+4915177777777", 0), ("0086 13812345678", 1)] {
        let (st, p) = agent
            .call("POST", "/api/v1/customers", Some(json!({ "name": "Dup", "identities": [{ "kind": "phone", "address": raw }] })))
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{raw}: {p}");
        let (st, r) = agent.call("GET", &format!("/api/v1/customers?q={}", raw.replace('+', "%2B").replace(' ', "%20")), None).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert_eq!(r["items"][0]["id"], ids[k], "{raw}: {r}");
    }
    th.stop().await;
}
