//! The fleet's machines for other tools: an Ansible inventory (groups per
//! service), JSON, or one name per line for ssh loops, pdsh and
//! clustershell.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::Config;

/// The formats of `fleet inventory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Ansible's JSON inventory (what an inventory script prints for
    /// `--list`): groups named after services, plus `all`.
    Ansible,
    /// `{"machines": [{"machine": ..., "services": [...]}]}`.
    Json,
    /// One machine per line.
    Ssh,
}

/// The inventory of `machines` (from `config`) in `format`.
pub fn render(config: &Config, machines: &[String], format: Format) -> String {
    let services_of = |m: &str| -> Vec<String> {
        config
            .services
            .iter()
            .filter(|s| s.machine == m)
            .map(|s| s.name.clone())
            .collect()
    };
    match format {
        Format::Ssh => machines.iter().map(|m| format!("{m}\n")).collect(),
        Format::Json => {
            let list: Vec<Value> = machines
                .iter()
                .map(|m| json!({"machine": m, "services": services_of(m)}))
                .collect();
            pretty(&json!({ "machines": list }))
        }
        Format::Ansible => {
            let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for m in machines {
                for s in services_of(m) {
                    groups.entry(group_name(&s)).or_default().push(m.clone());
                }
            }
            let mut doc = serde_json::Map::new();
            doc.insert(
                "all".into(),
                json!({ "hosts": machines, "children": groups.keys().collect::<Vec<_>>() }),
            );
            for (g, hosts) in groups {
                doc.insert(g, json!({ "hosts": hosts }));
            }
            doc.insert("_meta".into(), json!({ "hostvars": {} }));
            pretty(&Value::Object(doc))
        }
    }
}

/// An Ansible group name for a service: letters, digits and `_` only.
fn group_name(service: &str) -> String {
    service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}
