//! Verdicts reported on the objects, as the App Mesh controller reported on its: a Warning
//! Event (`events.k8s.io/v1`) naming every problem, and a status condition
//! (`MeshAgentAccepted`, False with the problems; True again once the object is fixed).
//! Only changes are written: an object is reported when its verdict differs from the last
//! one reported.
use std::collections::HashMap;

use k8s_openapi::{
    api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tracing::warn;

use super::build::{ObjectKey, Verdict};

/// The condition type the control plane sets on App Mesh objects.
pub(super) use mesh_model::crd::ACCEPTED_CONDITION as CONDITION;
/// Who reports (the Event's reportingController, the field manager of status patches).
const CONTROLLER: &str = "mesh-agent-control-plane";
/// An Event's note is at most 1 kB (the API's limit).
const MAX_NOTE: usize = 1024;

pub(super) struct Reports {
    client: Client,
    recorder: Recorder,
    /// The last verdict reported per object; objects never reported are accepted ones.
    reported: HashMap<ObjectKey, Vec<String>>,
}

impl Reports {
    pub(super) fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            reported: HashMap::new(),
        }
    }

    /// Reports every verdict that changed; a failed write is logged and tried again with the
    /// next verdicts.
    pub(super) async fn report(&mut self, verdicts: &[Verdict]) {
        for verdict in verdicts {
            let last = self.reported.get(&verdict.object);
            let changed = match last {
                Some(problems) => *problems != verdict.problems,
                // Accepted objects never rejected are left alone (no write per object).
                None => !verdict.problems.is_empty(),
            };
            if !changed {
                continue;
            }
            match self.write(verdict).await {
                Ok(()) => {
                    self.reported
                        .insert(verdict.object.clone(), verdict.problems.clone());
                }
                Err(error) => warn!(
                    kind = verdict.object.kind.kind,
                    namespace = verdict.object.namespace.as_deref().unwrap_or(""),
                    name = %verdict.object.name,
                    %error,
                    "cannot report on the object"
                ),
            }
        }
        // Objects gone stay unreported.
        self.reported
            .retain(|key, _| verdicts.iter().any(|v| v.object == *key));
    }

    async fn write(&self, verdict: &Verdict) -> Result<(), kube::Error> {
        let key = &verdict.object;
        let (event, condition) = if verdict.problems.is_empty() {
            let event = Event {
                type_: EventType::Normal,
                reason: "Accepted".into(),
                note: Some("valid again: served with the mesh".into()),
                action: "Validate".into(),
                secondary: None,
            };
            (event, condition("True", "Accepted", "served with the mesh"))
        } else {
            let message = note(&verdict.problems);
            let event = Event {
                type_: EventType::Warning,
                reason: "ValidationFailed".into(),
                note: Some(message.clone()),
                action: "Validate".into(),
                secondary: None,
            };
            (event, condition("False", "ValidationFailed", &message))
        };
        self.recorder.publish(&event, &reference(key)).await?;
        let api: Api<DynamicObject> = match &key.namespace {
            Some(namespace) => {
                Api::namespaced_with(self.client.clone(), namespace, &key.kind.api_resource())
            }
            None => Api::all_with(self.client.clone(), &key.kind.api_resource()),
        };
        let patch = json!({"status": {"conditions": [condition]}});
        api.patch_status(
            &key.name,
            &PatchParams::apply(CONTROLLER),
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(())
    }
}

fn condition(status: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": Time(Timestamp::now()),
    })
}

/// The problems as one note, cut at the API's limit (at a character boundary), saying so.
fn note(problems: &[String]) -> String {
    let mut text = format!(
        "not served (the last good mesh is): {}",
        problems.join("; ")
    );
    if text.len() > MAX_NOTE {
        let marker = "…";
        let mut end = MAX_NOTE - marker.len();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(marker);
    }
    text
}

fn reference(key: &ObjectKey) -> ObjectReference {
    ObjectReference {
        api_version: Some(key.kind.api_version()),
        kind: Some(key.kind.kind.to_owned()),
        name: Some(key.name.clone()),
        namespace: key.namespace.clone(),
        uid: key.uid.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_note_is_cut_at_the_api_limit_saying_so() {
        let problems = vec!["é".repeat(2000)];
        let text = note(&problems);
        assert!(text.len() <= MAX_NOTE, "{}", text.len());
        assert!(text.ends_with('…'));
        assert!(note(&["short".into()]).ends_with("short"));
    }
}
