//! A small MQTT client for tests: connect, subscribe, publish and receive, each step waiting for
//! the broker's answer (CONNACK, SUBACK, PUBACK) with a deadline.
//!
//! rumqttc makes progress only while its event loop is polled, so the loop runs in a task that
//! forwards every event to a channel; the methods here read that channel. The client does not
//! reconnect: a dropped connection is reported by the next call, which is what a test wants to
//! see. (The device agent has its own reconnecting loop.)

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::HarnessError;

/// How long each broker round trip may take.
pub const ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(10);

/// A message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// Whether it was a retained message.
    pub retain: bool,
}

impl Message {
    /// The payload as UTF-8 (lossy), for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A connected MQTT client driven by a background task. Dropping it disconnects abruptly.
#[derive(Debug)]
pub struct TestClient {
    id: String,
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    /// Messages that arrived while we were waiting for something else.
    inbox: VecDeque<Message>,
    task: JoinHandle<()>,
}

impl TestClient {
    /// Connects and waits for a successful CONNACK; any error (TLS handshake refused, connection
    /// refused, CONNACK with a failure code) is returned with the client id in the message.
    pub async fn connect(options: MqttOptions) -> Result<TestClient, HarnessError> {
        let id = options.client_id();
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (sender, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, sender));
        let mut this = TestClient {
            id,
            client,
            events,
            inbox: VecDeque::new(),
            task,
        };
        this.next_matching("CONNACK", |event| match event {
            Event::Incoming(Packet::ConnAck(ack)) => Some(ack.code),
            _ => None,
        })
        .await
        .and_then(|code| match code {
            ConnectReturnCode::Success => Ok(()),
            refused => Err(HarnessError::Mqtt(format!(
                "connection refused: {refused:?}"
            ))),
        })
        .map_err(|error| match error {
            HarnessError::Mqtt(message) => {
                HarnessError::Mqtt(format!("client {}: {message}", this.id))
            }
            other => other,
        })?;
        Ok(this)
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The underlying rumqttc client, for anything not covered here.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Subscribes at QoS 1 and returns the broker's SUBACK codes.
    pub async fn try_subscribe(
        &mut self,
        filter: &str,
    ) -> Result<Vec<SubscribeReasonCode>, HarnessError> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|error| HarnessError::Mqtt(format!("subscribe {filter}: {error}")))?;
        self.next_matching(&format!("SUBACK for {filter}"), |event| match event {
            Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes at QoS 1; panics unless the broker grants it.
    pub async fn subscribe(&mut self, filter: &str) {
        let codes = self
            .try_subscribe(filter)
            .await
            .unwrap_or_else(|error| panic!("client {}: {error}", self.id));
        assert!(
            codes
                .iter()
                .all(|code| matches!(code, SubscribeReasonCode::Success(_))),
            "client {}: subscription to {filter} refused: {codes:?}",
            self.id
        );
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    ///
    /// Note: mosquitto acknowledges an MQTT 3.1.1 publish the ACL denies and drops it silently
    /// (IoT Core would disconnect instead), so a PUBACK does not mean anyone may receive it.
    pub async fn try_publish(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), HarnessError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|error| HarnessError::Mqtt(format!("publish to {topic}: {error}")))?;
        let pkid = self
            .next_matching(
                &format!("sending the publish to {topic}"),
                |event| match event {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                    _ => None,
                },
            )
            .await?;
        self.next_matching(&format!("PUBACK for {topic}"), |event| match event {
            Event::Incoming(Packet::PubAck(ack)) if ack.pkid == pkid => Some(()),
            _ => None,
        })
        .await
    }

    /// Publishes at QoS 1 and waits for the PUBACK; panics on failure.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        if let Err(error) = self.try_publish(topic, payload).await {
            panic!("client {}: {error}", self.id);
        }
    }

    /// The next received message, or `None` if none arrives within `deadline`.
    /// Connection errors panic.
    pub async fn recv_within(&mut self, deadline: Duration) -> Option<Message> {
        if let Some(message) = self.inbox.pop_front() {
            return Some(message);
        }
        let id = self.id.clone();
        let received = tokio::time::timeout(deadline, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                        return message_from(publish);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => panic!("client {id}: connection failed: {error}"),
                    None => panic!("client {id}: event loop ended"),
                }
            }
        })
        .await;
        received.ok()
    }

    /// The next received message; panics naming `what` if none arrives within the deadline.
    pub async fn expect_message(&mut self, deadline: Duration, what: &str) -> Message {
        match self.recv_within(deadline).await {
            Some(message) => message,
            None => panic!(
                "client {}: timed out after {deadline:?} waiting for {what}",
                self.id
            ),
        }
    }

    /// Receives messages until one on `topic` arrives and returns it together with everything
    /// received before it (in order). The basis of "never delivered" assertions: publish the
    /// forbidden message, then a marker from the same client, and check what came first.
    pub async fn messages_until(
        &mut self,
        topic: &str,
        deadline: Duration,
    ) -> (Message, Vec<Message>) {
        let mut before = Vec::new();
        let started = tokio::time::Instant::now();
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            let message = self
                .expect_message(left, &format!("a message on {topic}"))
                .await;
            if message.topic == topic {
                return (message, before);
            }
            before.push(message);
        }
    }

    /// Sends DISCONNECT and waits for the event loop to finish.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(ROUND_TRIP_DEADLINE, async {
            while let Some(Ok(_)) = self.events.recv().await {}
        })
        .await;
    }

    /// Reads events until `pick` returns `Some`, buffering incoming messages on the way.
    async fn next_matching<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, HarnessError> {
        let inbox = &mut self.inbox;
        let events = &mut self.events;
        let outcome = tokio::time::timeout(ROUND_TRIP_DEADLINE, async {
            loop {
                match events.recv().await {
                    Some(Ok(event)) => {
                        if let Some(found) = pick(&event) {
                            return Ok(found);
                        }
                        if let Event::Incoming(Packet::Publish(publish)) = event {
                            inbox.push_back(message_from(publish));
                        }
                    }
                    Some(Err(error)) => {
                        return Err(HarnessError::Mqtt(format!(
                            "connection failed while waiting for {what}: {error}"
                        )))
                    }
                    None => {
                        return Err(HarnessError::Mqtt(format!(
                            "event loop ended while waiting for {what}"
                        )))
                    }
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| {
            Err(HarnessError::Timeout {
                what: what.to_owned(),
                waited: ROUND_TRIP_DEADLINE,
            })
        })
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls the event loop, forwarding events; stops at the first error (no reconnects).
async fn drive(mut eventloop: EventLoop, sender: mpsc::UnboundedSender<Result<Event, String>>) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if sender
            .send(event.map_err(|error| error.to_string()))
            .is_err()
            || failed
        {
            return;
        }
    }
}

fn message_from(publish: rumqttc::Publish) -> Message {
    Message {
        topic: publish.topic,
        payload: publish.payload.to_vec(),
        qos: publish.qos,
        retain: publish.retain,
    }
}
