//! The JSON body of an event: the same bytes in a webhook request (where they are
//! signed) and in the live stream's `data:` line. The envelope is the Standard
//! Webhooks one: `type`, `timestamp` (RFC 3339), `data`.
//!
//! A webhook's event is not rendered when it happens but by the outbox. Both
//! outboxes' writers pack the event in a form of their own; an outbox that nodes
//! share (PostgreSQL) renders the body when the delivery moves a packed batch
//! into rows ([`render_at`]); SQLite's, when the delivery reads a batch back,
//! keeps each event's [`record`] (the fields alone, about
//! half the bytes), which [`deliverable`] renders on the webhooks' own thread. At
//! saturation the outbox's bytes (SQLite's WAL pages and checkpoints) and the
//! rendering were most of what webhooks took from admissions.
//!
//! Both the events' fan-out and the stores use this module, which imports
//! nothing of ours but the domain and the leaves [`json_text`] and [`utc_text`].

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::domain::events::{EventKind, EventType, SessionEvent};
use crate::{json_text, utc_text};

/// A session id as the event has it, or as a record kept it (already text).
#[derive(Clone, Copy)]
enum Id<'a> {
    Typed(crate::domain::SessionId),
    Text(&'a str),
}

impl std::fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Typed(id) => id.fmt(f),
            Self::Text(id) => f.write_str(id),
        }
    }
}

fn display_or_null<S: serde::Serializer>(value: &Option<impl std::fmt::Display>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

/// Room for a whole body or record at once: growing the buffer from serde_json's
/// 128 bytes took two reallocations per event.
const BODY_CAPACITY: usize = 384;
const RECORD_CAPACITY: usize = 192;

pub fn render(event: &SessionEvent, at: SystemTime) -> String {
    envelope(Record::of(event), event.pool.publisher_id(), at)
}

/// The body of an event reported at `created_at` (unix ms): what [`render`] made
/// then, and what [`deliverable`] makes of its [`record`].
pub fn render_at(event: &SessionEvent, created_at: u64) -> String {
    render(event, at_millis(created_at))
}

fn at_millis(created_at: u64) -> SystemTime {
    // A time past what the platform can hold (a damaged row) must not panic.
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(created_at))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The body, written by hand: the Standard Webhooks envelope `{"data":{…},
/// "timestamp":…,"type":…}` with every object's keys in alphabetical order, absent
/// optional fields left out (`sessionId` and `sessionName` are `null` instead),
/// byte for byte what serde_json made of the sorted structs this replaced (a test
/// holds them equal). It runs at every delivery attempt, on the request's thread
/// where the outbox takes bodies, and for the live stream: serde_json's escaping
/// of every byte and the formatter's ids took most of its time.
fn envelope(r: Record<'_>, publisher_id: &str, at: SystemTime) -> String {
    let mut out = String::with_capacity(BODY_CAPACITY);
    out.push_str("{\"data\":{");
    if let Some(cause) = r.cause.as_deref() {
        out.push_str("\"cause\":");
        json_text::push_str(&mut out, cause);
        out.push(',');
    }
    out.push_str("\"customerId\":");
    json_text::push_str(&mut out, &r.customer_id);
    if let Some(enforced) = r.enforced {
        out.push_str(if enforced {
            ",\"enforced\":true"
        } else {
            ",\"enforced\":false"
        });
    }
    out.push_str(",\"offerId\":");
    json_text::push_str(&mut out, &r.offer_id);
    out.push_str(",\"publisherId\":");
    json_text::push_str(&mut out, publisher_id);
    if let Some(reason) = r.reason.as_deref() {
        out.push_str(",\"reason\":");
        json_text::push_str(&mut out, reason);
    }
    out.push_str(",\"sessionId\":");
    json_id(&mut out, r.session_id);
    out.push_str(",\"sessionName\":");
    json_opt_str(&mut out, r.session_name.as_deref());
    if let Some((id, name)) = &r.taken_over_by {
        out.push_str(",\"takenOverBy\":{\"sessionId\":");
        json_id(&mut out, Some(*id));
        out.push_str(",\"sessionName\":");
        json_text::push_str(&mut out, name);
        out.push('}');
    }
    out.push_str("},\"timestamp\":\"");
    push_timestamp(&mut out, at);
    out.push_str("\",\"type\":\"");
    out.push_str(r.event_type.as_str());
    out.push_str("\"}");
    out
}

/// `at` in RFC 3339 with milliseconds, in UTC, as humantime's
/// `format_rfc3339_millis` writes it (a time before 1970, which humantime
/// refuses, as 1970).
fn push_timestamp(out: &mut String, at: SystemTime) {
    utc_text::push_millis(out, at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
}

/// What a body says, without its envelope's fixed parts (the publisher is the
/// outbox row's, the timestamp its `created_at`).
struct Record<'a> {
    event_type: EventType,
    customer_id: Cow<'a, str>,
    offer_id: Cow<'a, str>,
    session_id: Option<Id<'a>>,
    session_name: Option<Cow<'a, str>>,
    cause: Option<Cow<'a, str>>,
    reason: Option<Cow<'a, str>>,
    enforced: Option<bool>,
    taken_over_by: Option<(Id<'a>, Cow<'a, str>)>,
}

impl<'a> Record<'a> {
    fn of(event: &'a SessionEvent) -> Self {
        let pool = &event.pool;
        let mut r = Record {
            event_type: event.event_type(),
            customer_id: Cow::Borrowed(pool.customer_id()),
            offer_id: Cow::Borrowed(pool.offer_id()),
            session_id: event.session_id.map(Id::Typed),
            session_name: event.session_name.as_deref().map(Cow::Borrowed),
            cause: None,
            reason: None,
            enforced: None,
            taken_over_by: None,
        };
        match &event.kind {
            EventKind::Granted | EventKind::Kicked => {}
            EventKind::Refused { reason, enforced } => {
                r.reason = Some(Cow::Borrowed(reason.as_str()));
                r.enforced = Some(*enforced);
            }
            EventKind::TakenOver { by, by_name } => r.taken_over_by = Some((Id::Typed(*by), Cow::Borrowed(by_name))),
            EventKind::Ended { cause } => r.cause = Some(Cow::Borrowed(cause.as_str())),
        }
        r
    }
}

/// The record's form in the outbox: a JSON array (it starts with `[`, where a
/// rendered body starts with `{`), positions fixed, absent fields `null`:
/// `[1, type, customerId, offerId, sessionId, sessionName, cause, reason,
/// enforced, takenOverBy.sessionId, takenOverBy.sessionName]`. The leading 1 is
/// the form's version.
#[derive(Serialize, Deserialize)]
struct Stored<'a>(
    u8,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow, serialize_with = "display_or_null", deserialize_with = "id_text")] Option<Id<'a>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    Option<bool>,
    #[serde(borrow, serialize_with = "display_or_null", deserialize_with = "id_text")] Option<Id<'a>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
);

const STORED_VERSION: u8 = 1;

fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Id<'de>>, D::Error> {
    // Session ids never need escaping, so they are borrowed from the record.
    Ok(Option::<&'de str>::deserialize(d)?.map(Id::Text))
}

/// The event as the outbox keeps it until delivery ([`deliverable`] renders it).
/// Written by hand, byte for byte what serde_json makes of [`Stored`] (a test
/// holds them equal): it ran on the request's thread for every event until the
/// outbox's writer took the event itself (serde_json's escaping of every byte and
/// its formatting of the ids took most of the report's instructions); it now runs
/// when the delivery reads a packed batch.
pub fn record(event: &SessionEvent) -> String {
    let r = Record::of(event);
    let mut out = String::with_capacity(RECORD_CAPACITY);
    out.push('[');
    out.push(char::from(b'0' + STORED_VERSION));
    out.push(',');
    json_text::push_str(&mut out, r.event_type.as_str());
    out.push(',');
    json_text::push_str(&mut out, &r.customer_id);
    out.push(',');
    json_text::push_str(&mut out, &r.offer_id);
    out.push(',');
    json_id(&mut out, r.session_id);
    for text in [&r.session_name, &r.cause, &r.reason] {
        out.push(',');
        json_opt_str(&mut out, text.as_deref());
    }
    out.push_str(match r.enforced {
        Some(true) => ",true,",
        Some(false) => ",false,",
        None => ",null,",
    });
    let (by, by_name) = r
        .taken_over_by
        .map_or((None, None), |(id, name)| (Some(id), Some(name)));
    json_id(&mut out, by);
    out.push(',');
    json_opt_str(&mut out, by_name.as_deref());
    out.push(']');
    out
}

fn json_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_text::push_str(out, s),
        None => out.push_str("null"),
    }
}

/// A session id, hyphenated and lower case as its `Display` writes it (it needs no
/// escaping), without going through the formatter.
fn json_id(out: &mut String, id: Option<Id<'_>>) {
    match id {
        Some(Id::Typed(id)) => {
            out.push('"');
            id.with_text(|id| out.push_str(id));
            out.push('"');
        }
        Some(Id::Text(id)) => json_text::push_str(out, id),
        None => out.push_str("null"),
    }
}

/// The bytes to sign and send for an outbox row's body: a record rendered now
/// (the timestamp is the event's, `created_at`, so every attempt sends the same
/// bytes), or a body rendered before records were kept, as it is. An unreadable
/// record is an error (a newer version's form): the caller retries it later.
pub fn deliverable<'b>(stored: &'b str, publisher_id: &str, created_at: u64) -> Result<Cow<'b, str>, String> {
    if !stored.starts_with('[') {
        return Ok(Cow::Borrowed(stored));
    }
    let Stored(
        version,
        event_type,
        customer_id,
        offer_id,
        session_id,
        session_name,
        cause,
        reason,
        enforced,
        by,
        by_name,
    ) = serde_json::from_str(stored).map_err(|e| format!("unreadable outbox record: {e}"))?;
    if version != STORED_VERSION {
        return Err(format!("outbox record of an unknown form (version {version})"));
    }
    let event_type = EventType::parse(&event_type)
        .ok_or_else(|| format!("outbox record of an unknown event type {event_type:?}"))?;
    let record = Record {
        event_type,
        customer_id,
        offer_id,
        session_id,
        session_name,
        cause,
        reason,
        enforced,
        taken_over_by: by.zip(by_name),
    };
    Ok(Cow::Owned(envelope(record, publisher_id, at_millis(created_at))))
}

/// The structs serde_json rendered bodies from before [`envelope`] was written
/// by hand ([`render_reference`]).
#[derive(Serialize)]
struct Envelope<'a> {
    data: Data<'a>,
    #[serde(serialize_with = "display")]
    timestamp: humantime::Rfc3339Timestamp,
    #[serde(rename = "type")]
    event_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'a str>,
    customer_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforced: Option<bool>,
    offer_id: &'a str,
    publisher_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(serialize_with = "display_or_null")]
    session_id: Option<Id<'a>>,
    session_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    taken_over_by: Option<TakenOverBy<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TakenOverBy<'a> {
    #[serde(serialize_with = "display")]
    session_id: Id<'a>,
    session_name: &'a str,
}

fn display<S: serde::Serializer>(value: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// The body as serde_json renders it from the sorted structs: the reference
/// [`render`] is held to, byte for byte (its tests, and `benches/events.rs`,
/// which measures both).
#[doc(hidden)]
pub fn render_reference(event: &SessionEvent, at: SystemTime) -> String {
    let r = Record::of(event);
    let envelope = Envelope {
        data: Data {
            cause: r.cause.as_deref(),
            customer_id: &r.customer_id,
            enforced: r.enforced,
            offer_id: &r.offer_id,
            publisher_id: event.pool.publisher_id(),
            reason: r.reason.as_deref(),
            session_id: r.session_id,
            session_name: r.session_name.as_deref(),
            taken_over_by: r.taken_over_by.as_ref().map(|(id, name)| TakenOverBy {
                session_id: *id,
                session_name: name,
            }),
        },
        timestamp: humantime::format_rfc3339_millis(at),
        event_type: r.event_type.as_str(),
    };
    serde_json::to_string(&envelope).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ports::EndCause;
    use crate::domain::{PoolKey, SessionId};
    use serde_json::Value;

    #[test]
    fn an_end_carries_its_cause_and_session() {
        let pool = PoolKey::from_ids("p", "c", "o");
        let id = SessionId::random();
        let event = SessionEvent::ended(&pool, id, Some("tv"), EndCause::PongTimeout);
        let body: Value = serde_json::from_str(&render(&event, SystemTime::UNIX_EPOCH)).unwrap_or_default();
        assert_eq!(body["type"], "session.ended");
        assert_eq!(body["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(body["data"]["cause"], "pong_timeout");
        assert_eq!(body["data"]["sessionId"], id.to_string());
        assert_eq!(body["data"]["sessionName"], "tv");
        assert_eq!(body["data"]["customerId"], "c");
    }

    /// The bytes of the `serde_json::Value` rendering this replaced (keys sorted):
    /// a receiver comparing or storing bodies sees no change.
    #[test]
    fn the_bytes_are_those_of_the_sorted_json_rendering() {
        let pool = PoolKey::from_ids("p", "c\"1", "o");
        let refused = SessionEvent::new(
            EventKind::Refused {
                reason: crate::domain::events::RefusalReason::LimitExceeded,
                enforced: true,
            },
            &pool,
            None,
            None,
        );
        assert_eq!(
            render(&refused, SystemTime::UNIX_EPOCH),
            r#"{"data":{"customerId":"c\"1","enforced":true,"offerId":"o","publisherId":"p","reason":"limit_exceeded","sessionId":null,"sessionName":null},"timestamp":"1970-01-01T00:00:00.000Z","type":"session.refused"}"#
        );
        let id = SessionId::random();
        let by = SessionId::random();
        let taken = SessionEvent::new(
            EventKind::TakenOver {
                by,
                by_name: "phone".into(),
            },
            &pool,
            Some(id),
            Some("tv"),
        );
        assert_eq!(
            render(&taken, SystemTime::UNIX_EPOCH),
            format!(
                r#"{{"data":{{"customerId":"c\"1","offerId":"o","publisherId":"p","sessionId":"{id}","sessionName":"tv","takenOverBy":{{"sessionId":"{by}","sessionName":"phone"}}}},"timestamp":"1970-01-01T00:00:00.000Z","type":"session.taken_over"}}"#
            )
        );
    }

    fn every_kind(pool: &PoolKey) -> Vec<SessionEvent> {
        let id = SessionId::random();
        let by = SessionId::random();
        vec![
            SessionEvent::new(EventKind::Granted, pool, Some(id), Some("tv \"1\"\n")),
            SessionEvent::new(EventKind::Kicked, pool, Some(id), None),
            SessionEvent::new(
                EventKind::Refused {
                    reason: crate::domain::events::RefusalReason::LimitExceeded,
                    enforced: false,
                },
                pool,
                None,
                None,
            ),
            SessionEvent::new(
                EventKind::TakenOver {
                    by,
                    by_name: "ph\u{f6}ne\\".into(),
                },
                pool,
                Some(id),
                Some("tv"),
            ),
            SessionEvent::ended(pool, id, Some("tv"), EndCause::Finished),
        ]
    }

    /// What a receiver gets from a record, rendered at delivery, is byte for byte
    /// what rendering the event when it happened gave.
    #[test]
    fn a_record_delivers_the_bytes_of_the_event_rendered_when_it_happened() {
        let pool = PoolKey::from_ids("p\"x", "c\"1\u{e9}", "o/\t");
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_527_405_123);
        for event in every_kind(&pool) {
            let record = record(&event);
            assert!(record.starts_with('['), "{record}");
            assert!(
                record.len() < render(&event, at).len(),
                "a record is smaller than its body"
            );
            let delivered = deliverable(&record, pool.publisher_id(), 1_764_527_405_123);
            assert_eq!(delivered.as_deref(), Ok(render(&event, at).as_str()), "{record}");
        }
    }

    /// The record written by hand is serde_json's rendering of [`Stored`], byte for
    /// byte, whatever the strings hold (quotes, backslashes, control characters,
    /// DEL, non-ASCII).
    #[test]
    fn the_record_is_serde_jsons_rendering_of_its_fields() {
        for (customer, offer) in [
            ("c", "o"),
            ("c\"1\u{e9}", "o/\t"),
            ("\u{0}\u{1f}\u{7f}\\", "\u{2028}\u{1f600}\r\u{8}\u{c}"),
            ("", " "),
        ] {
            let pool = PoolKey::from_ids("p", customer, offer);
            for event in every_kind(&pool) {
                let r = Record::of(&event);
                let (by, by_name) = r
                    .taken_over_by
                    .map_or((None, None), |(id, name)| (Some(id), Some(name)));
                let stored = Stored(
                    STORED_VERSION,
                    Cow::Borrowed(r.event_type.as_str()),
                    r.customer_id,
                    r.offer_id,
                    r.session_id,
                    r.session_name,
                    r.cause,
                    r.reason,
                    r.enforced,
                    by,
                    by_name,
                );
                assert_eq!(record(&event), serde_json::to_string(&stored).unwrap_or_default());
            }
        }
    }

    /// The body written by hand is serde_json's rendering of the sorted structs,
    /// byte for byte, for every kind of event, strings that need escaping and
    /// timestamps from 1970 to 9999.
    #[test]
    fn the_body_is_serde_jsons_rendering_of_the_sorted_structs() {
        let times = [0, 1, 999, 1_764_527_405_123, 253_402_300_799_999];
        for (publisher, customer, offer) in [
            ("p", "c", "o"),
            ("p\"x", "c\"1\u{e9}", "o/\t"),
            ("\u{7f}", "\u{0}\u{1f}\u{7f}\\", "\u{2028}\u{1f600}\r\u{8}\u{c}"),
            ("", "", " "),
        ] {
            let pool = PoolKey::from_ids(publisher, customer, offer);
            for event in every_kind(&pool) {
                for ms in times {
                    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
                    assert_eq!(render(&event, at), render_reference(&event, at));
                }
            }
        }
    }

    /// Rows written before records were kept hold the body itself.
    #[test]
    fn a_body_rendered_before_records_is_delivered_as_it_is() {
        let body = r#"{"data":{},"timestamp":"1970-01-01T00:00:00.000Z","type":"session.granted"}"#;
        assert_eq!(deliverable(body, "p", 5), Ok(Cow::Borrowed(body)));
    }

    #[test]
    fn a_record_of_an_unknown_form_is_an_error_not_a_body() {
        assert!(
            deliverable(
                r#"[2,"session.granted","c","o",null,null,null,null,null,null,null]"#,
                "p",
                0
            )
            .is_err()
        );
        assert!(
            deliverable(
                r#"[1,"session.unknown","c","o",null,null,null,null,null,null,null]"#,
                "p",
                0
            )
            .is_err()
        );
        assert!(deliverable("[1,", "p", 0).is_err());
    }
}
