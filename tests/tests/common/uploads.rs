//! What the upload tests (issue 13, reliability §2) need of the stack beyond the shared set-up:
//! replacing the runner (another spill directory), a crashed in-process agent and its restart.

use std::time::Duration;

use edge_functions::env::Objects;
use edge_functions::objects::local::{self as spill_http, LocalObjects};
use edge_functions::runner::{run, MqttSettings};
use tokio::sync::oneshot;

use super::Stack;

/// The secret of the stack's spill endpoint (see `Stack::start_with_spill`).
pub const SPILL_SECRET: &[u8] = b"e2e-spill-secret";

impl Stack {
    /// Stops the runner cleanly (its persistent session keeps what arrives meanwhile).
    pub async fn stop_runner(&mut self) {
        if let Some((stop, handle)) = self.runner.take() {
            stop.send(()).unwrap();
            handle.await.unwrap().unwrap();
        }
    }

    /// Starts a runner (same client id and session as the stack's) whose object store is
    /// `objects`: another spill directory than the upload endpoint's, say.
    pub async fn start_runner_with(&mut self, objects: LocalObjects) {
        assert!(self.runner.is_none(), "one runner at a time");
        let deps = self.deps.clone().with_objects(Objects::Local(objects));
        let service = self.pki.service();
        let (stop, stopped) = oneshot::channel::<()>();
        let before = self.broker.subacks_sent_to("edge-service-e2e");
        let handle = tokio::spawn(run(
            deps,
            MqttSettings {
                url: format!("mqtts://127.0.0.1:{}", self.broker.port()),
                ca: self.pki.ca().cert_path().to_path_buf(),
                cert: service.cert_path().to_path_buf(),
                key: service.key_path().to_path_buf(),
                client_id: "edge-service-e2e".into(),
                share_group: None,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let topics = edge_functions::runner::subscriptions(None).len();
        let broker = &self.broker;
        edge_e2e::wait_for(
            Duration::from_secs(30),
            "the runner's subscriptions",
            || async { broker.subacks_sent_to("edge-service-e2e") >= before + topics },
        )
        .await;
        self.runner = Some((stop, handle));
    }

    /// The object store the stack's upload endpoint writes to, as a runner would configure it.
    pub fn spill_objects(&self, base_url: &str) -> LocalObjects {
        let (dir, _) = self.spill.as_ref().expect("started with spill");
        LocalObjects::new(dir.path(), base_url, SPILL_SECRET.to_vec())
    }

    /// Serves `objects` on a fresh port; returns its base URL (the task ends with the test).
    pub async fn serve_objects(objects: &LocalObjects) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(spill_http::serve(
            std::sync::Arc::new(objects.clone()),
            None,
            listener,
            std::future::pending(),
        ));
        base
    }

    /// Waits until the in-process agent has died (a failpoint's panic: the crash), and forgets it.
    pub async fn wait_agent_crashed(&mut self) {
        let (_stop, handle) = self.agent.take().expect("an agent is running");
        let joined = tokio::time::timeout(super::DEADLINE, handle)
            .await
            .expect("the agent to crash at its failpoint");
        assert!(
            joined.as_ref().is_err_and(|e| e.is_panic()),
            "the agent ended without crashing: {joined:?}"
        );
    }
}
