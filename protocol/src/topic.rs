//! MQTT topics (spec §1): `{topic_slug}/{device_name}/sync/...`.
//!
//! The broker ACL is written against these exact names, and the cloud derives the device identity
//! it trusts from the session, not from the topic; parsing a topic is for routing and for
//! checking that the two agree.

use std::fmt;

use thiserror::Error;

/// The six topics under a device's root topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicKind {
    RowsBatch,
    TelemetryBatch,
    SchemaObserve,
    IngestAck,
    IngestRequest,
    IngestControl,
}

impl TopicKind {
    /// Every kind, device → cloud ones first.
    pub const ALL: [TopicKind; 6] = [
        TopicKind::RowsBatch,
        TopicKind::TelemetryBatch,
        TopicKind::SchemaObserve,
        TopicKind::IngestAck,
        TopicKind::IngestRequest,
        TopicKind::IngestControl,
    ];

    /// The topic below the root, e.g. `sync/rows/batch`.
    pub fn suffix(&self) -> &'static str {
        match self {
            TopicKind::RowsBatch => "sync/rows/batch",
            TopicKind::TelemetryBatch => "sync/telemetry/batch",
            TopicKind::SchemaObserve => "sync/schema/observe",
            TopicKind::IngestAck => "sync/ingest/ack",
            TopicKind::IngestRequest => "sync/ingest/request",
            TopicKind::IngestControl => "sync/ingest/control",
        }
    }

    /// True for the five topics a device publishes on; false for `sync/ingest/control`.
    pub fn is_device_to_cloud(&self) -> bool {
        !matches!(self, TopicKind::IngestControl)
    }

    /// Inverse of [`TopicKind::suffix`].
    pub fn from_suffix(suffix: &str) -> Option<TopicKind> {
        TopicKind::ALL.into_iter().find(|k| k.suffix() == suffix)
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// Why a topic, slug or device name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("device name is empty")]
    EmptyDeviceName,
    #[error("{what} {value:?} contains {ch:?}, which MQTT topics reserve")]
    ReservedCharacter {
        what: &'static str,
        value: String,
        ch: char,
    },
    #[error(
        "device name {0:?} is reserved: the broker's ACL gives that identity service rights \
         (reserved: edge-service, edge-audit)"
    )]
    ReservedIdentity(String),
    #[error("topic slug {0:?} starts with '$': wildcard subscriptions never match such topics")]
    DollarSlug(String),
    #[error("topic {0:?} does not end in a known sync/... suffix")]
    UnknownSuffix(String),
    #[error("topic {0:?} is not {{slug}}/{{device_name}}/sync/...")]
    BadRoot(String),
}

/// `{slug}/{device_name}`; an empty slug gives `/{device_name}` (empty first level).
pub fn root_topic(slug: &str, device_name: &str) -> String {
    format!("{slug}/{device_name}")
}

/// `{root}/{suffix}`.
pub fn topic(root: &str, kind: TopicKind) -> String {
    format!("{root}/{}", kind.suffix())
}

/// The parts of a sync topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParsedTopic {
    pub slug: String,
    pub device_name: String,
    pub kind: TopicKind,
}

impl ParsedTopic {
    /// `{slug}/{device_name}`.
    pub fn root(&self) -> String {
        root_topic(&self.slug, &self.device_name)
    }
}

/// A device name (thing name / client id / certificate CN) must be one non-empty topic level:
/// no `/`, no wildcards `+` `#`, no NUL (forbidden in MQTT strings).
pub fn validate_device_name(device_name: &str) -> Result<(), TopicError> {
    if device_name.is_empty() {
        return Err(TopicError::EmptyDeviceName);
    }
    check_level("device name", device_name)
}

/// Identities the broker's ACL treats specially (reliability.md §7): the cloud service
/// (`user edge-service`: reads every device topic, writes every control topic) and the test
/// auditor (`user edge-audit`: reads everything). Never a device's name, compared without case.
pub const RESERVED_IDENTITIES: [&str; 2] = ["edge-service", "edge-audit"];

/// A name a new device may be registered under: a valid device name
/// ([`validate_device_name`]) that is not one of the [`RESERVED_IDENTITIES`] — a device with
/// such a certificate CN would get the service's ACL, and its certificate would overwrite the
/// runner's own.
pub fn validate_registrable_device_name(device_name: &str) -> Result<(), TopicError> {
    validate_device_name(device_name)?;
    if RESERVED_IDENTITIES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(device_name.trim()))
    {
        return Err(TopicError::ReservedIdentity(device_name.to_owned()));
    }
    Ok(())
}

/// A topic slug may be empty but otherwise follows the device-name rules; it may not start
/// with `$` (MQTT reserves such first levels: `+/…` subscriptions never match them).
pub fn validate_slug(slug: &str) -> Result<(), TopicError> {
    check_level("topic slug", slug)?;
    if slug.starts_with('$') {
        return Err(TopicError::DollarSlug(slug.to_owned()));
    }
    Ok(())
}

fn check_level(what: &'static str, value: &str) -> Result<(), TopicError> {
    match value.chars().find(|c| matches!(c, '/' | '+' | '#' | '\0')) {
        Some(ch) => Err(TopicError::ReservedCharacter {
            what,
            value: value.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

/// Splits `{slug}/{device_name}/sync/...` into its parts, validating slug and device name.
pub fn parse_topic(topic: &str) -> Result<ParsedTopic, TopicError> {
    let (root, kind) = TopicKind::ALL
        .into_iter()
        .find_map(|kind| {
            topic
                .strip_suffix(kind.suffix())
                .and_then(|rest| rest.strip_suffix('/'))
                .map(|root| (root, kind))
        })
        .ok_or_else(|| TopicError::UnknownSuffix(topic.to_owned()))?;
    let (slug, device_name) = root
        .split_once('/')
        .ok_or_else(|| TopicError::BadRoot(topic.to_owned()))?;
    validate_slug(slug)?;
    validate_device_name(device_name)?;
    Ok(ParsedTopic {
        slug: slug.to_owned(),
        device_name: device_name.to_owned(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_every_kind() {
        for slug in ["acme-prod", ""] {
            let root = root_topic(slug, "gw-07");
            for kind in TopicKind::ALL {
                let t = topic(&root, kind);
                let parsed = parse_topic(&t).unwrap();
                assert_eq!(parsed.slug, slug);
                assert_eq!(parsed.device_name, "gw-07");
                assert_eq!(parsed.kind, kind);
                assert_eq!(parsed.root(), root);
            }
        }
        assert_eq!(root_topic("", "gw-07"), "/gw-07");
        assert_eq!(
            topic("acme-prod/gw-07", TopicKind::RowsBatch),
            "acme-prod/gw-07/sync/rows/batch"
        );
    }

    #[test]
    fn reserved_identities_and_topic_levels_are_not_registrable() {
        for name in [
            "edge-service",
            "edge-audit",
            "EDGE-SERVICE",
            "",
            "+",
            "#",
            "a/b",
            "a\0b",
        ] {
            assert!(
                validate_registrable_device_name(name).is_err(),
                "{name:?} must be refused"
            );
        }
        assert!(matches!(
            validate_registrable_device_name("edge-service"),
            Err(TopicError::ReservedIdentity(_))
        ));
        assert!(validate_registrable_device_name("gw-07").is_ok());
        assert!(validate_slug("$SYS").is_err());
        assert!(validate_slug("").is_ok());
    }

    #[test]
    fn directions() {
        let to_cloud: Vec<TopicKind> = TopicKind::ALL
            .into_iter()
            .filter(TopicKind::is_device_to_cloud)
            .collect();
        assert_eq!(to_cloud.len(), 5);
        assert!(!TopicKind::IngestControl.is_device_to_cloud());
    }

    #[test]
    fn rejects_bad_topics() {
        let bad = [
            "acme/gw-07/sync/rows/other",
            "gw-07/sync/rows/batch",
            "sync/rows/batch",
            "acme//sync/rows/batch",
            "acme/x/gw-07/sync/rows/batch",
            "acme/gw+07/sync/rows/batch",
            "acme/gw#/sync/rows/batch",
            "ac+me/gw/sync/rows/batch",
            "acme/gw-07sync/rows/batch",
        ];
        for t in bad {
            assert!(parse_topic(t).is_err(), "{t}");
        }
        assert_eq!(validate_device_name(""), Err(TopicError::EmptyDeviceName));
        assert!(validate_device_name("a/b").is_err());
        assert!(validate_slug("").is_ok());
    }
}
