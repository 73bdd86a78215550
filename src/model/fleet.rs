//! The `fleet status --json` document as data: every machine's own
//! `status --json` document side by side, and per service how far the
//! rollout of its head has come. Written by `provision fleet status`, read
//! back by the fleet's page and by anyone's tooling.

use serde::{Deserialize, Serialize};

use crate::model::status::{self as machine, ServiceStatus};

/// Version of the `fleet status --json` document.
pub const SCHEMA: u32 = 1;

/// The `fleet status --json` document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Document {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Unix time it was made.
    pub time: u64,
    /// One entry per machine asked, in config order.
    #[serde(default)]
    pub machines: Vec<MachineStatus>,
    /// One entry per service of those machines, in config order.
    #[serde(default)]
    pub services: Vec<Rollout>,
}

/// One machine.
#[derive(Debug, Deserialize)]
pub struct MachineStatus {
    /// Its name in the config.
    pub machine: String,
    /// Whether ssh reached it and provision answered with a document.
    pub reachable: bool,
    /// Why not, or what went wrong there.
    pub error: Option<String>,
    /// That machine's `status --json` document, as it sent it (shown
    /// whole in `fleet status --json`, fields of a newer version included),
    /// kept as its text: a parsed tree of 10,000 machines' documents would
    /// take ten times the memory.
    pub status: Option<Box<serde_json::value::RawValue>>,
    /// The same document, typed: what the fleet reads. `None` when the
    /// machine sent none, or one this version cannot read (`error` says).
    #[serde(skip)]
    pub doc: Option<machine::Document>,
}

/// How far one service's head has come across the fleet.
#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Rollout {
    /// The service's name.
    pub name: String,
    /// The upstream head most machines report (40 hex digits).
    pub head: Option<String>,
    /// Machines the config runs it on (of those asked).
    pub machines: usize,
    /// Deploying the head.
    pub at_head: usize,
    /// Waiting for their turn in a staged rollout of the head.
    pub waiting: usize,
    /// When the first of the waiting machines adopts it (Unix time).
    pub waiting_from: Option<u64>,
    /// When the last of them does.
    pub waiting_until: Option<u64>,
    /// Refused the head (a check or the service rejected it).
    pub rejected: usize,
    /// Following, but not at the head yet (nor waiting or rejected).
    pub behind: usize,
    /// Frozen or pinned away from the head.
    pub frozen: usize,
    /// Whose last pass failed.
    pub failing: usize,
    /// Not reached.
    pub unreachable: usize,
}

impl Document {
    /// Reads a `fleet status --json` document, each machine's own
    /// document typed as well (one that does not read stays only raw, with
    /// `error` saying why).
    pub fn read(text: &str) -> Result<Document, serde_json::Error> {
        let mut doc: Document = serde_json::from_str(text)?;
        for m in &mut doc.machines {
            m.doc = match m
                .status
                .as_ref()
                .map(|r| serde_json::from_str::<machine::Document>(r.get()))
            {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    m.error
                        .get_or_insert(format!("its status document does not read: {e}"));
                    None
                }
                None => None,
            };
        }
        Ok(doc)
    }
}

/// `status` is the document as the machine sent it, or, from a source
/// that typed it already (Prometheus), the typed document.
impl Serialize for MachineStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("MachineStatus", 4)?;
        st.serialize_field("machine", &self.machine)?;
        st.serialize_field("reachable", &self.reachable)?;
        st.serialize_field("error", &self.error)?;
        match (&self.status, &self.doc) {
            (Some(raw), _) => st.serialize_field("status", raw)?,
            (None, doc) => st.serialize_field("status", doc)?,
        }
        st.end()
    }
}

impl MachineStatus {
    /// The entry of service `name` in the machine's typed document.
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.doc.as_ref()?.services.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fleet document reads back with every machine's document typed,
    /// counts an older writer left out as 0, and a machine whose document
    /// does not read is named so.
    #[test]
    fn a_fleet_document_reads_back_typed() {
        let text = r#"{"schema": 1, "time": 5, "machines": [
            {"machine": "a", "reachable": true, "status": {"schema": 1, "machine": "a", "time": 4,
              "services": [{"name": "web", "state": "frozen", "drift": {"count": 2}}]}},
            {"machine": "b", "reachable": true, "status": {"services": 1}},
            {"machine": "c", "reachable": false, "error": "ssh: no route"}],
          "services": [{"name": "web", "machines": 3, "at_head": 1}]}"#;
        let doc = Document::read(text).expect("a fleet document");
        let web = doc.machines[0].service("web").expect("a's web");
        assert_eq!(web.state, crate::model::status::Tracking::Frozen);
        assert_eq!(web.drift.count, Some(2));
        assert!(doc.machines[1].doc.is_none());
        assert!(doc.machines[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("does not read")));
        assert_eq!(doc.machines[2].error.as_deref(), Some("ssh: no route"));
        let r = &doc.services[0];
        assert_eq!(
            (r.machines, r.at_head, r.waiting, r.head.as_deref()),
            (3, 1, 0, None)
        );
    }
}
