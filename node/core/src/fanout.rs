//! Asking every node about what only it holds: each node keeps some data to itself (the
//! verdict log of the mail it received), and an admin asking any node wants the whole
//! cluster's answer. Requests travel as [`wmail_consensus`] application requests between
//! members; core hands them to the [`LocalQuery`] the binary installed.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Core, NodeId};

/// A question about node-local data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeQuery {
    /// The inbound verdict log, with a query in JSON (the protection crate's
    /// `VerdictQuery`).
    Verdicts(String),
}

/// Answers [`NodeQuery`]s on this node (blocking allowed: it runs on a blocking thread).
pub type LocalQuery = Arc<dyn Fn(NodeQuery) -> Result<serde_json::Value, String> + Send + Sync>;

/// How long a node has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

impl Core {
    /// Installs what answers [`NodeQuery`]s about this node.
    pub fn set_local_query(&self, answer: LocalQuery) {
        let _ = self.local_query.set(answer);
    }

    /// Answers a query about this node's data.
    pub(crate) async fn answer_locally(&self, query: NodeQuery) -> Result<serde_json::Value, String> {
        let Some(answer) = self.local_query.get().cloned() else {
            return Err("this node keeps no such data".to_owned());
        };
        tokio::task::spawn_blocking(move || answer(query)).await.map_err(|error| error.to_string())?
    }

    /// Asks every member (this node included) at once; each answer or why it is missing.
    pub async fn ask_every_node(&self, query: NodeQuery) -> Vec<(NodeId, Result<serde_json::Value, String>)> {
        let metrics = self.consensus.metrics();
        let members: Vec<(NodeId, String)> =
            metrics.membership_config.membership().nodes().map(|(id, node)| (*id, node.addr.clone())).collect();
        let members = if members.is_empty() { vec![(self.node_id(), String::new())] } else { members };
        let request = postcard::to_allocvec(&query).expect("postcard encodes queries");
        let asks = members.into_iter().map(|(id, addr)| {
            let (query, request) = (query.clone(), request.clone());
            async move {
                if id == self.node_id() {
                    return (id, self.answer_locally(query).await);
                }
                let answer = tokio::time::timeout(ANSWER_TIMEOUT, self.consensus.ask_peer(id, &addr, request)).await;
                let answer = match answer {
                    Ok(Ok(bytes)) => serde_json::from_slice(&bytes).map_err(|error| error.to_string()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
                };
                (id, answer)
            }
        });
        futures::future::join_all(asks).await
    }
}
