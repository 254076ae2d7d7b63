//! The JSON body of an event: the same bytes in a webhook request (where they are
//! signed) and in the live stream's `data:` line. The envelope is the Standard
//! Webhooks one: `type`, `timestamp` (RFC 3339), `data`.

use std::time::SystemTime;

use serde::Serialize;

use crate::domain::events::{EventKind, SessionEvent};

/// The envelope. Fields (here and in [`Data`]) are in alphabetical order: the
/// bodies were first rendered through `serde_json::Value`, whose maps sort their
/// keys, and the bytes a receiver signs stay the same. Written straight from the
/// event's borrowed fields: a body per event is rendered on the request's thread.
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
    cause: Option<&'static str>,
    customer_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforced: Option<bool>,
    offer_id: &'a str,
    publisher_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(serialize_with = "display_or_null")]
    session_id: Option<crate::domain::SessionId>,
    session_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    taken_over_by: Option<TakenOverBy<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TakenOverBy<'a> {
    #[serde(serialize_with = "display")]
    session_id: crate::domain::SessionId,
    session_name: &'a str,
}

fn display<S: serde::Serializer>(value: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn display_or_null<S: serde::Serializer>(value: &Option<crate::domain::SessionId>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

pub fn render(event: &SessionEvent, at: SystemTime) -> String {
    let pool = &event.pool;
    let mut data = Data {
        cause: None,
        customer_id: &pool.customer_id,
        enforced: None,
        offer_id: &pool.offer_id,
        publisher_id: &pool.publisher_id,
        reason: None,
        session_id: event.session_id,
        session_name: event.session_name.as_deref(),
        taken_over_by: None,
    };
    match &event.kind {
        EventKind::Granted | EventKind::Kicked => {}
        EventKind::Refused { reason, enforced } => {
            data.reason = Some(reason.as_str());
            data.enforced = Some(*enforced);
        }
        EventKind::TakenOver { by, by_name } => {
            data.taken_over_by = Some(TakenOverBy {
                session_id: *by,
                session_name: by_name,
            });
        }
        EventKind::Ended { cause } => data.cause = Some(cause.as_str()),
    }
    let envelope = Envelope {
        data,
        timestamp: humantime::format_rfc3339_millis(at),
        event_type: event.event_type().as_str(),
    };
    // Only a failing writer or a map with non-string keys fails, and neither is here.
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
        let pool = PoolKey {
            publisher_id: "p".into(),
            customer_id: "c".into(),
            offer_id: "o".into(),
        };
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
        let pool = PoolKey {
            publisher_id: "p".into(),
            customer_id: "c\"1".into(),
            offer_id: "o".into(),
        };
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
}
