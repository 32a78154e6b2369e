//! The scripted SMSC of `tests/sms/smsc.mjs` (npm `smpp`'s server) driven from a test:
//! commands on stdin, one JSON event per line on stdout. Used by the campaign tests
//! and the SMS e2e tests (`#[path]`-included so the shared support module stays as it is).
#![allow(dead_code)]

use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

/// The scripted SMSC: commands on stdin, events on stdout.
pub struct Smsc {
    pub child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event read so far.
    pub log: Vec<Value>,
    pub port: u16,
}

impl Smsc {
    pub async fn start() -> Smsc {
        Smsc::start_with(&[]).await
    }

    pub async fn start_with(env: &[(&str, &str)]) -> Smsc {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sms");
        assert!(dir.join("node_modules/smpp").exists(), "run `npm install` in tests/sms (scripts/test.sh does) for the SMPP peer");
        let mut child = tokio::process::Command::new("node")
            .arg("smsc.mjs")
            .current_dir(&dir)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut s = Smsc { child, stdin, events, log: vec![], port: 0 };
        let l = s.wait(10, |e| e["event"] == "listening").await;
        s.port = l["port"].as_u64().unwrap() as u16;
        s
    }

    pub async fn cmd(&mut self, c: Value) {
        self.stdin.write_all(format!("{c}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Waits for the next event (after those already read) matching `f`.
    pub async fn wait(&mut self, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    self.log.push(e.clone());
                    if f(&e) {
                        return e;
                    }
                }
                Ok(None) => panic!("the SMSC exited; events: {:?}", self.log),
                Err(_) => panic!("no matching SMSC event within {secs} s; events: {:?}", self.log),
            }
        }
    }

    /// Reads whatever events arrive within `ms`.
    pub async fn drain(&mut self, ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.log.push(e);
        }
    }

    pub fn submits(&self) -> Vec<&Value> {
        self.log.iter().filter(|e| e["event"] == "submit_sm").collect()
    }

    pub async fn deliver(&mut self, tag: &str, source: &str, text: &str, concat: Option<[u8; 3]>) -> Value {
        let coding = if text.chars().all(|c| c.is_ascii_alphanumeric() || " .,!?".contains(c)) { "gsm" } else { "ucs2" };
        self.cmd(json!({ "cmd": "deliver", "tag": tag, "source": source, "dest": "4930123456", "text": text, "coding": coding, "concat": concat }))
            .await;
        self.wait(15, |e| e["event"] == "deliver_sm_resp" && e["tag"] == tag).await
    }
}

/// The `[[channels]]` table of an smpp channel bound to the scripted SMSC.
pub fn channel(port: u16, extra: &str) -> toml::Value {
    toml::from_str(&format!(
        "type = \"smpp\"\nname = \"sms-main\"\nhost = \"127.0.0.1\"\nport = {port}\nsystem_id = \"switchboard\"\npassword = \"secret\"\n\
         source_address = \"4930123456\"\nresponse_timeout_secs = 2\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n\
         throttle_backoff_ms = 100\nlease_secs = 3\n{extra}"
    ))
    .unwrap()
}
