//! Reports of one call to core, applied strictly in the order the engine made them.
//!
//! Signalling never waits on core, so reports run outside the engine task; but they
//! must not run as one task per report. A caller who hangs up a few milliseconds after
//! the agent answered produces "answered" and then "ended": run side by side, "ended"
//! can reach core first (no bridge known yet: the interaction is abandoned), then
//! "answered" accepts the offer and leaves the interaction `active` for ever with the
//! agent's voice slot used. One queue and one task per call apply them in order.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::call::{CallInfo, CallOutcome, CallRouting, CallTicket, Side};
use crate::media_session::Recorder;

/// One report, as queued.
#[derive(Debug)]
enum Report {
    /// Offer progress, supervision, or the end of a call.
    Event(CallTicket, CallOutcome),
    /// The end of a bridged call, reported once its recording file is closed.
    EndedRecorded { ticket: CallTicket, by: Side, recorder: Option<Recorder> },
    /// The caller left while queued or being offered.
    Abandon(CallTicket),
    /// A voicemail file is complete.
    Voicemail(CallInfo, PathBuf),
    /// The caller hung up in the IVR.
    HungUpInIvr(CallInfo),
}

/// The sending side of one call's report queue; cheap to clone. The task applying the
/// reports ends when every clone is dropped and the queue is drained.
#[derive(Debug, Clone)]
pub struct CallReports {
    tx: mpsc::UnboundedSender<Report>,
}

impl CallReports {
    /// Starts the queue of call `call_id` (the id is only used in logs).
    pub fn spawn(routing: Arc<dyn CallRouting>, call_id: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
        tokio::spawn(async move {
            while let Some(report) = rx.recv().await {
                apply(routing.as_ref(), &call_id, report).await;
            }
        });
        Self { tx }
    }

    /// Queues an event for core.
    pub fn event(&self, ticket: CallTicket, event: CallOutcome) {
        self.send(Report::Event(ticket, event));
    }

    /// Queues the end of a bridged call; the recording (if any) is closed first, in the
    /// queue's task, so the engine does not wait for the file.
    pub fn ended_recorded(&self, ticket: CallTicket, by: Side, recorder: Option<Recorder>) {
        self.send(Report::EndedRecorded { ticket, by, recorder });
    }

    /// Queues an abandon (the caller left before being bridged).
    pub fn abandon(&self, ticket: CallTicket) {
        self.send(Report::Abandon(ticket));
    }

    /// Queues a recorded voicemail.
    pub fn voicemail(&self, info: CallInfo, recording: PathBuf) {
        self.send(Report::Voicemail(info, recording));
    }

    /// Queues a hang-up in the IVR (`info.ivr_path`: the nodes visited).
    pub fn hung_up_in_ivr(&self, info: CallInfo) {
        self.send(Report::HungUpInIvr(info));
    }

    fn send(&self, report: Report) {
        // The task only ends once every sender is gone, so this cannot fail while we
        // hold one; log rather than drop silently should a runtime shut down mid-call.
        if let Err(e) = self.tx.send(report) {
            tracing::warn!(report = ?e.0, "Call report dropped: the report queue has stopped.");
        }
    }
}

async fn apply(routing: &dyn CallRouting, call_id: &str, report: Report) {
    let (what, result) = match report {
        Report::Event(ticket, event) => ("call event", routing.call_event(&ticket, event).await),
        Report::EndedRecorded { ticket, by, recorder } => {
            let recording = match recorder {
                Some(r) => {
                    let _ = r.stop.send(());
                    if let Err(error) = r.done.await {
                        tracing::warn!(%call_id, %error, "Call recording task failed.");
                    }
                    Some(r.path)
                }
                None => None,
            };
            ("call end", routing.call_event(&ticket, CallOutcome::Ended { by, recording }).await)
        }
        Report::Abandon(ticket) => ("abandon", routing.abandon(&ticket).await),
        Report::Voicemail(info, path) => ("voicemail", routing.voicemail(info, path).await),
        Report::HungUpInIvr(info) => ("hang-up in the IVR", routing.hung_up_in_ivr(info).await),
    };
    if let Err(error) = result {
        tracing::warn!(%call_id, %error, report = what, "Routing rejected a call report.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::RoutingError;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Answers take long (a slow accept in the database), everything else is instant.
    struct SlowAnswers(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl CallRouting for SlowAnswers {
        async fn enqueue_call(&self, _call: CallInfo) -> Result<CallTicket, RoutingError> {
            Err(RoutingError("unused".into()))
        }
        async fn abandon(&self, _ticket: &CallTicket) -> Result<(), RoutingError> {
            self.0.lock().unwrap().push("abandon".into());
            Ok(())
        }
        async fn call_event(&self, _ticket: &CallTicket, event: CallOutcome) -> Result<(), RoutingError> {
            if matches!(event, CallOutcome::Answered { .. }) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let name = serde_json::to_value(&event).ok().and_then(|v| v["type"].as_str().map(str::to_string)).unwrap_or_default();
            self.0.lock().unwrap().push(name);
            Ok(())
        }
        async fn voicemail(&self, _call: CallInfo, _recording: PathBuf) -> Result<(), RoutingError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn reports_of_one_call_apply_in_order() {
        let routing = Arc::new(SlowAnswers(Mutex::new(Vec::new())));
        let reports = CallReports::spawn(routing.clone(), "c1".into());
        let ticket = CallTicket { call_id: "c1".into(), interaction_id: "i1".into() };
        reports.event(ticket.clone(), CallOutcome::Ringing { offer_id: "o".into() });
        reports.event(ticket.clone(), CallOutcome::Answered { offer_id: "o".into(), agent: "alice".into() });
        reports.ended_recorded(ticket.clone(), Side::Caller, None);
        reports.abandon(ticket);
        drop(reports);
        for _ in 0..100 {
            if routing.0.lock().unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*routing.0.lock().unwrap(), vec!["ringing", "answered", "ended", "abandon"]);
    }
}
