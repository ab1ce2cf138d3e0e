//! Posts firing and resolved alerts to a webhook, in the JSON Alertmanager
//! sends its webhook receivers (version 4), so receivers written for it work
//! unchanged. A thread of its own posts them in order, retrying with backoff;
//! the sampler only queues, and a full queue drops (logged) rather than waits.

use super::Transition;
use gpuvisor_admin::alerts::AlertView;
use gpuvisor_admin::time::format_rfc3339;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Messages waiting to be posted at most; beyond, new ones are dropped.
const QUEUE: usize = 1024;
/// Attempts per message: 0.5 + 1 + 2 + 4 s of backoff between them.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(5);
/// The `receiver` Alertmanager would name; here, who sent it.
const RECEIVER: &str = "gpuvisord";
/// Alertmanager's "not resolved yet" end time.
const NO_END: &str = "0001-01-01T00:00:00Z";

enum Msg {
    Post { body: Vec<u8>, what: String },
    Stop,
}

/// The sender thread.
pub struct Webhook {
    tx: SyncSender<Msg>,
    external_url: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Webhook {
    /// Starts posting to `url`; `external_url` (the admin API) goes in the
    /// payload's `externalURL` and each alert's `generatorURL`.
    pub fn start(url: String, external_url: String) -> Webhook {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("gpuvisord-webhook".into())
            .spawn(move || run(&url, rx))
            .map_err(|e| tracing::warn!("cannot start the alert webhook thread ({e}); alerts will not be posted"))
            .ok();
        Webhook { tx, external_url, thread }
    }

    /// Queues a transition without waiting.
    pub fn send(&self, t: &Transition) {
        let body = match serde_json::to_vec(&payload(t, &self.external_url)) {
            Ok(b) => b,
            Err(e) => return tracing::warn!("alert webhook: cannot encode the payload: {e}"),
        };
        let (status, a) = status_of(t);
        let what = format!("{status} {} {:?}", a.rule, a.labels);
        match self.tx.try_send(Msg::Post { body, what }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(rule = %a.rule, "alert webhook queue full: notification dropped")
            }
            Err(TrySendError::Disconnected(_)) => tracing::warn!(rule = %a.rule, "alert webhook not running: dropped"),
        }
    }

    /// Posts what is queued once more each, without retrying, and stops.
    pub fn stop(self) {
        let Webhook { tx, thread, .. } = self;
        // Dropping the sender also stops the thread when the queue is too
        // full to take the Stop.
        let _ = tx.try_send(Msg::Stop);
        drop(tx);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn status_of(t: &Transition) -> (&'static str, &AlertView) {
    match t {
        Transition::Fired(a) => ("firing", a),
        Transition::Resolved(a) => ("resolved", a),
    }
}

/// Alertmanager's webhook body for one alert's transition: one group per
/// alert name, holding this alert.
pub fn payload(t: &Transition, external_url: &str) -> serde_json::Value {
    let (status, a) = status_of(t);
    let mut annotations = serde_json::Map::new();
    if let Some(s) = &a.summary {
        annotations.insert("summary".into(), s.clone().into());
    }
    if let Some(d) = &a.description {
        annotations.insert("description".into(), d.clone().into());
    }
    let ends_at = a.resolved_at.map_or_else(|| NO_END.to_owned(), format_rfc3339);
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", a.rule),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": RECEIVER,
        "groupLabels": { "alertname": a.rule },
        "commonLabels": a.labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": a.labels,
            "annotations": annotations,
            "startsAt": format_rfc3339(a.fired_at.unwrap_or(a.started_at)),
            "endsAt": ends_at,
            "generatorURL": format!("{external_url}/v1/alerts"),
            "fingerprint": a.fingerprint,
        }],
    })
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<(), String> {
    let resp = agent.post(url).content_type("application/json").send(body).map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

fn run(url: &str, rx: mpsc::Receiver<Msg>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .user_agent(concat!("gpuvisord/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut queue: VecDeque<(Vec<u8>, String)> = VecDeque::new();
    let mut stopping = false;
    loop {
        if queue.is_empty() {
            if stopping {
                return;
            }
            match rx.recv() {
                Ok(Msg::Post { body, what }) => queue.push_back((body, what)),
                Ok(Msg::Stop) | Err(_) => return,
            }
        }
        let Some((body, what)) = queue.pop_front() else { continue };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match post(&agent, url, &body) {
                Ok(()) => {
                    tracing::debug!(%url, %what, attempt, "alert posted to the webhook");
                    break;
                }
                Err(e) if attempt >= ATTEMPTS || stopping => {
                    tracing::warn!(%url, %what, "alert webhook: giving up after {attempt} attempts: {e}");
                    break;
                }
                Err(e) => {
                    let backoff = FIRST_BACKOFF * 2u32.pow(attempt - 1);
                    tracing::warn!(%url, %what, "alert webhook: {e}; retrying in {backoff:?}");
                    // Wait out the backoff, queueing what arrives meanwhile.
                    let until = Instant::now() + backoff;
                    loop {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        match rx.recv_timeout(left) {
                            Ok(Msg::Post { body, what }) => queue.push_back((body, what)),
                            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                                stopping = true;
                                break;
                            }
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                }
            }
        }
        // Whatever arrived while posting, in order.
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Post { body, what } => queue.push_back((body, what)),
                Msg::Stop => stopping = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuvisor_admin::alerts::AlertState;
    use std::collections::BTreeMap;

    #[test]
    fn the_payload_is_alertmanagers_webhook_format() {
        let a = AlertView {
            rule: "GpuXidError".into(),
            state: AlertState::Resolved,
            labels: BTreeMap::from([
                ("alertname".to_owned(), "GpuXidError".to_owned()),
                ("gpu".to_owned(), "GPU-1".to_owned()),
            ]),
            value: Some(1.0),
            started_at: 1_746_100_790.0,
            fired_at: Some(1_746_100_800.0),
            resolved_at: Some(1_746_101_400.5),
            summary: Some("XID on GPU-1".into()),
            description: None,
            fingerprint: "00112233aabbccdd".into(),
        };
        let p = payload(&Transition::Resolved(a.clone()), "http://127.0.0.1:9400");
        assert_eq!((p["version"].as_str(), p["status"].as_str()), (Some("4"), Some("resolved")));
        assert_eq!(p["groupLabels"], json!({"alertname": "GpuXidError"}));
        assert_eq!(p["commonLabels"]["gpu"], "GPU-1");
        let alert = &p["alerts"][0];
        assert_eq!(alert["startsAt"], "2025-05-01T12:00:00.000Z");
        assert_eq!(alert["endsAt"], "2025-05-01T12:10:00.500Z");
        assert_eq!(alert["annotations"], json!({"summary": "XID on GPU-1"}));
        assert_eq!(alert["fingerprint"], "00112233aabbccdd");
        assert_eq!(alert["generatorURL"], "http://127.0.0.1:9400/v1/alerts");
        let firing = payload(&Transition::Fired(AlertView { resolved_at: None, ..a }), "");
        assert_eq!((firing["status"].as_str(), firing["alerts"][0]["endsAt"].as_str()), (Some("firing"), Some(NO_END)));
    }
}
