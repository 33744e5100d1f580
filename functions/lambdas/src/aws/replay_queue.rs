//! The replay queue (SQS): one message per [`crate::replay_trigger::ReplayTrigger::nudge`].

use aws_config::SdkConfig;
use serde_json::json;

use super::AwsError;

/// `SendMessage` to the queue that triggers the `replay` Lambda.
#[derive(Debug, Clone)]
pub struct SqsReplayQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsReplayQueue {
    pub fn new(sdk: &SdkConfig, queue_url: impl Into<String>) -> Self {
        SqsReplayQueue {
            client: aws_sdk_sqs::Client::new(sdk),
            queue_url: queue_url.into(),
        }
    }

    /// Sends `{"reason": …, "sent_at": …}`; the replay Lambda ignores the body (it drains
    /// whatever intents are open), the reason is for whoever reads the queue.
    pub async fn send(&self, reason: &str) -> Result<(), AwsError> {
        let sent_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(json!({"reason": reason, "sent_at": sent_at}).to_string())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::service("sqs:SendMessage", e))
    }
}
