//! The forms of a staged batch (a row of `webhook_outbox_staged`, SQLite's or
//! PostgreSQL's; PostgreSQL's has only ever held [`PACKED`]): how
//! the outbox writer's events are laid out in it, and how the delivery reads
//! them back. [`PACKED`] is written now; the forms before it are still read,
//! should batches staged by an earlier version wait in the database.
//!
//! Every byte staged is written twice by SQLite (to the WAL, then by the
//! checkpoint) and costs the outbox's thread on a saturated node's core; and the
//! packing runs on the server's runtime. So the packed form takes the event
//! itself, not a JSON record of it: its ids as their 16 bytes, its strings as
//! they are behind their length, its kind's details as bits of one byte. The
//! record the delivery renders from is made when the delivery reads the batch
//! (its claim, which runs on the server's runtime, makes them a chunk at a time).

use std::borrow::Cow;

use crate::domain::events::{
    EventKind, EventType, MESSAGE_PREFIX, OutboxBatch, OutboxBody, OutboxEvent, RefusalReason, SessionEvent,
    message_id_text,
};
use crate::domain::ports::{EndCause, SettingsError};
use crate::domain::{Millis, PoolKey};
use crate::event_body;
use crate::store::packing::{Reader, push_text, push_varint, unzigzag, zigzag};

/// The forms, as the column `form` tells them: [`JSON_ARRAY`], [`FRAMED`] and
/// [`COMPACT`] were written by earlier versions and are still read.
pub(super) const JSON_ARRAY: i64 = 1;
pub(super) const FRAMED: i64 = 2;
pub(super) const COMPACT: i64 = 3;
pub(super) const PACKED: i64 = 4;

/// One staged event, borrowed from its batch where it can be.
pub(super) struct Unstaged<'a> {
    pub message_id: Cow<'a, str>,
    pub ordering_key: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    pub body: StagedBody<'a>,
    pub created_at: Millis,
}

/// A staged event's body as read.
pub(super) enum StagedBody<'a> {
    /// As it was staged: a record, or a body as it is.
    Text(Cow<'a, str>),
    /// A packed event, whose record is not made yet: the reader of a batch makes
    /// the records a chunk at a time ([`CHUNK`]), yielding between chunks.
    Event(SessionEvent),
}

impl StagedBody<'_> {
    /// What [`event_body::deliverable`] takes: a record, or a body as it is.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Self::Text(text) => Cow::Borrowed(text),
            Self::Event(event) => Cow::Owned(event_body::record(event)),
        }
    }
}

/// Events made into records at most between two yields of the task: a batch
/// of thousands at once would hold a runtime thread for a millisecond.
pub(super) const CHUNK: usize = 256;

/// The bytes a batch's first event finds room for.
const FIRST_ROOM: usize = 2048;

/// Appends `e` to `batch` in the [`PACKED`] form. An event without a message
/// id or an ordering key is refused (a receiver could not drop a duplicate, nor
/// its session's order be kept): it is a bug upstream.
pub(super) fn pack_into(batch: &mut OutboxBatch, e: &OutboxEvent) -> Result<(), SettingsError> {
    let keyless = matches!(&e.body, OutboxBody::Text { ordering_key, .. } if ordering_key.is_empty());
    if e.message_id.is_empty() || keyless {
        return Err(SettingsError::Database(format!(
            "an outbox event without a message id or an ordering key: {:?}",
            e.message_id
        )));
    }
    append(batch, e.created_at, |out, previous| pack_event(out, e, previous));
    Ok(())
}

/// [`pack_into`] of a session event as the server reports it, whose message id
/// is [`message_id_text`] of `message_id`: the same bytes, with no text made
/// and read back.
pub(super) fn pack_reported_into(
    batch: &mut OutboxBatch,
    message_id: [u8; 16],
    event: &SessionEvent,
    created_at: Millis,
) {
    append(batch, created_at, |out, previous| {
        let key = if event.session_id.is_some() {
            KEY_SESSION
        } else {
            KEY_MESSAGE
        };
        out.push(type_index(event.event_type()) | (key << KEY_SHIFT) | HEX_ID | EVENT_BODY);
        push_varint(out, zigzag(created_at.wrapping_sub(previous) as i64));
        out.extend_from_slice(&message_id);
        pack_session_event(out, event);
    });
}

/// One event appended to `batch` by `pack`, given the time of the event before
/// it (the first's: 0).
fn append(batch: &mut OutboxBatch, created_at: Millis, pack: impl FnOnce(&mut Vec<u8>, Millis)) {
    if batch.packed.capacity() == 0 {
        // Room for a few dozen events at once, then the vector doubles: not a
        // whole row's (some 48 KB), which every publisher's open batch would
        // hold however few events it has.
        batch.packed.reserve(FIRST_ROOM);
    }
    let previous = if batch.is_empty() { 0 } else { batch.last_created_at };
    pack(&mut batch.packed, previous);
    batch.ends.push(u32::try_from(batch.packed.len()).unwrap_or(u32::MAX));
    batch.last_created_at = created_at;
}

/// The [`PACKED`] form of one event:
///
/// - a head byte: the type (bits 0–2, its place in [`EventType::ALL`]); the
///   message id is `msg_` and 32 lower-case hex digits, kept as their 16 bytes
///   (bit 3; otherwise it is a text); the ordering key (bits 4–5: [`KEY_SESSION`],
///   the event's session id; [`KEY_MESSAGE`], the message id, for an event of no
///   session; [`KEY_TEXT`], a text given with a body of text); the body is an
///   event (bit 6; otherwise a text);
/// - `created_at`: milliseconds since the event before it in the batch (the
///   first's since 0), signed as the clock may step back, a zigzag varint;
/// - the message id, then the key if it is a text;
/// - the body: a text, or an event: a byte of what it holds (bit 0 a session id,
///   bit 1 a session name; a refusal's reason in bits 2–3 and whether it was
///   enforced in bit 4; an end's cause in bits 2–4, its place in
///   [`EndCause::ALL`]), the offer id and the customer id as texts, the session
///   id's 16 bytes, the session name as a text; a takeover then has the taking
///   session's 16 bytes and its name.
///
/// A text is a varint of its length in bytes, then its UTF-8 bytes as they are.
/// The publisher is the staged row's.
fn pack_event(out: &mut Vec<u8>, e: &OutboxEvent, previous: Millis) {
    let hex_id = message_id_bytes(&e.message_id);
    let (key, text_key) = match &e.body {
        OutboxBody::Event(event) if event.session_id.is_some() => (KEY_SESSION, None),
        OutboxBody::Event(_) => (KEY_MESSAGE, None),
        OutboxBody::Text { ordering_key, .. } => (KEY_TEXT, Some(ordering_key)),
    };
    let mut head = type_index(e.event_type) | (key << KEY_SHIFT);
    if hex_id.is_some() {
        head |= HEX_ID;
    }
    if matches!(e.body, OutboxBody::Event(_)) {
        head |= EVENT_BODY;
    }
    out.push(head);
    // Two's complement: the read adds it back with `wrapping_add_signed`, exact for any two times.
    push_varint(out, zigzag(e.created_at.wrapping_sub(previous) as i64));
    match hex_id {
        Some(bytes) => out.extend_from_slice(&bytes),
        None => push_text(out, &e.message_id),
    }
    if let Some(text_key) = text_key {
        push_text(out, text_key);
    }
    match &e.body {
        OutboxBody::Text { body, .. } => push_text(out, body),
        OutboxBody::Event(event) => pack_session_event(out, event),
    }
}

fn pack_session_event(out: &mut Vec<u8>, event: &SessionEvent) {
    let mut held = 0u8;
    if event.session_id.is_some() {
        held |= HAS_SESSION;
    }
    if event.session_name.is_some() {
        held |= HAS_NAME;
    }
    match &event.kind {
        EventKind::Refused { reason, enforced } => {
            held |= reason_index(*reason) << DETAIL_SHIFT;
            if *enforced {
                held |= ENFORCED;
            }
        }
        EventKind::Ended { cause } => held |= cause_index(*cause) << DETAIL_SHIFT,
        EventKind::Granted | EventKind::TakenOver { .. } | EventKind::Kicked => {}
    }
    out.push(held);
    push_text(out, event.pool.offer_id());
    push_text(out, event.pool.customer_id());
    if let Some(id) = event.session_id {
        out.extend_from_slice(id.0.as_bytes());
    }
    if let Some(name) = &event.session_name {
        push_text(out, name);
    }
    if let EventKind::TakenOver { by, by_name } = &event.kind {
        out.extend_from_slice(by.0.as_bytes());
        push_text(out, by_name);
    }
}

const TYPE_BITS: u8 = 0b111;
const HEX_ID: u8 = 1 << 3;
const KEY_SHIFT: u8 = 4;
const KEY_SESSION: u8 = 0;
const KEY_MESSAGE: u8 = 1;
const KEY_TEXT: u8 = 2;
const EVENT_BODY: u8 = 1 << 6;

const HAS_SESSION: u8 = 1;
const HAS_NAME: u8 = 1 << 1;
const DETAIL_SHIFT: u8 = 2;
const ENFORCED: u8 = 1 << 4;

/// The 16 bytes behind a message id of this server's making (`msg_` and 32
/// lower-case hex digits); none for any other text, which is kept as it is.
fn message_id_bytes(id: &str) -> Option<[u8; 16]> {
    let hex = id.strip_prefix(MESSAGE_PREFIX)?.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    // One pass, lower case only: what `message_id_text` writes back.
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(bytes)
}

fn type_index(t: EventType) -> u8 {
    EventType::ALL.iter().position(|x| *x == t).unwrap_or_default() as u8
}

fn cause_index(cause: EndCause) -> u8 {
    EndCause::ALL.iter().position(|x| *x == cause).unwrap_or_default() as u8
}

const REASONS: [RefusalReason; 3] = [
    RefusalReason::LimitExceeded,
    RefusalReason::TooManyPools,
    RefusalReason::HouseholdLimit,
];

fn reason_index(reason: RefusalReason) -> u8 {
    REASONS.iter().position(|x| *x == reason).unwrap_or_default() as u8
}

fn unpack(batch: &[u8], publisher_id: &str) -> Result<Vec<Unstaged<'static>>, String> {
    let mut events = Vec::new();
    let mut r = Reader::new(batch);
    let mut previous: Millis = 0;
    while !r.is_empty() {
        let head = r.byte()?;
        let event_type = *EventType::ALL
            .get(usize::from(head & TYPE_BITS))
            .ok_or_else(|| format!("an unknown event type {}", head & TYPE_BITS))?;
        previous = previous.wrapping_add_signed(unzigzag(r.varint()?));
        let message_id = if head & HEX_ID != 0 {
            message_id_text(r.bytes()?)
        } else {
            r.text()?.to_owned()
        };
        let key = (head >> KEY_SHIFT) & 0b11;
        let key_text = match key {
            KEY_TEXT => Some(r.text()?.to_owned()),
            KEY_SESSION | KEY_MESSAGE => None,
            other => return Err(format!("an unknown kind of key {other}")),
        };
        let (body, session_id) = if head & EVENT_BODY != 0 {
            let event = unpack_session_event(&mut r, event_type, publisher_id)?;
            let session_id = event.session_id;
            (StagedBody::Event(event), session_id)
        } else {
            (StagedBody::Text(Cow::Owned(r.text()?.to_owned())), None)
        };
        let ordering_key = match (key, key_text) {
            (_, Some(text)) => text,
            (KEY_MESSAGE, None) => message_id.clone(),
            (_, None) => session_id
                .ok_or("an event keyed by its session that has none")?
                .with_text(str::to_owned),
        };
        events.push(Unstaged {
            message_id: Cow::Owned(message_id),
            ordering_key: Cow::Owned(ordering_key),
            event_type: Cow::Borrowed(event_type.as_str()),
            body,
            created_at: previous,
        });
    }
    Ok(events)
}

fn unpack_session_event(r: &mut Reader<'_>, event_type: EventType, publisher_id: &str) -> Result<SessionEvent, String> {
    let held = r.byte()?;
    let detail = held >> DETAIL_SHIFT;
    let offer_id = r.text()?;
    let customer_id = r.text()?;
    let session_id = if held & HAS_SESSION != 0 {
        Some(r.session_id()?)
    } else {
        None
    };
    let session_name = if held & HAS_NAME != 0 {
        Some(r.text()?.to_owned())
    } else {
        None
    };
    let kind = match event_type {
        EventType::Granted => EventKind::Granted,
        EventType::Kicked => EventKind::Kicked,
        EventType::Refused => EventKind::Refused {
            reason: *REASONS
                .get(usize::from(detail & 0b11))
                .ok_or_else(|| format!("an unknown refusal reason {}", detail & 0b11))?,
            enforced: held & ENFORCED != 0,
        },
        EventType::Ended => EventKind::Ended {
            cause: *EndCause::ALL
                .get(usize::from(detail & 0b111))
                .ok_or_else(|| format!("an unknown end cause {}", detail & 0b111))?,
        },
        EventType::TakenOver => EventKind::TakenOver {
            by: r.session_id()?,
            by_name: r.text()?.to_owned(),
        },
    };
    Ok(SessionEvent {
        kind,
        pool: PoolKey::from_ids(publisher_id, customer_id, offer_id),
        session_id,
        session_name,
    })
}

/// The first form: a JSON array of [message id, ordering key, type, body, created at].
#[derive(serde::Deserialize)]
struct JsonStaged(String, String, String, String, Millis);

/// The [`FRAMED`] form: per event a header line `message_id ordering_key
/// event_type created_at length` and then `length` bytes of body as they are.
fn unframe_framed(batch: &str) -> Result<Vec<Unstaged<'_>>, String> {
    let mut events = Vec::new();
    let mut rest = batch;
    while !rest.is_empty() {
        let (header, after) = rest.split_once('\n').ok_or("a header without its line break")?;
        let mut fields = header.split(' ');
        let mut next = || fields.next().ok_or_else(|| format!("a short header: {header:?}"));
        let (message_id, ordering_key, event_type) = (next()?, next()?, next()?);
        let created_at = next()?.parse().map_err(|_| format!("a bad created_at: {header:?}"))?;
        let length: usize = next()?.parse().map_err(|_| format!("a bad length: {header:?}"))?;
        let body = after
            .get(..length)
            .ok_or_else(|| format!("a body shorter than its length: {header:?}"))?;
        rest = &after[length..];
        events.push(Unstaged {
            message_id: Cow::Borrowed(message_id),
            ordering_key: Cow::Borrowed(ordering_key),
            event_type: Cow::Borrowed(event_type),
            body: StagedBody::Text(Cow::Borrowed(body)),
            created_at,
        });
    }
    Ok(events)
}

/// The `,null` a record's absent field is, and how many a [`COMPACT`] header may
/// say were left out (a record has 10 fields after its version).
const NULL: &str = ",null";
const MAX_NULLS: usize = 10;

/// A key or type of a [`COMPACT`] header, from the stored body it refers to.
fn dereference<'a>(field: &'a str, stored: &'a str, message_id: &'a str) -> Result<&'a str, String> {
    if field == "=" {
        return Ok(message_id);
    }
    if let Some(text) = field.strip_prefix(':') {
        return Ok(text);
    }
    let slice = field.strip_prefix('@').and_then(|at| {
        let (offset, length) = at.split_once('+')?;
        let offset: usize = offset.parse().ok()?;
        stored.get(offset..offset.checked_add(length.parse().ok()?)?)
    });
    slice.ok_or_else(|| format!("a bad reference {field:?} into a body of {} bytes", stored.len()))
}

/// The [`COMPACT`] form: per event a header line `message_id key type created
/// length nulls`, then `length` bytes of the stored body. `key` and `type` are
/// `@O+L` (the stored body's bytes from offset `O`, `L` long), `=` (the message
/// id) or `:` and the text; `created` the milliseconds since the event before it
/// in the batch, signed; `nulls` how many `,null` ended the body before its
/// closing `]` and were not stored.
fn unframe_compact(batch: &str) -> Result<Vec<Unstaged<'_>>, String> {
    let mut events = Vec::new();
    let mut rest = batch;
    let mut previous: Millis = 0;
    while !rest.is_empty() {
        let (header, after) = rest.split_once('\n').ok_or("a header without its line break")?;
        let mut fields = header.split(' ');
        let mut next = || fields.next().ok_or_else(|| format!("a short header: {header:?}"));
        let (message_id, key, event_type, created) = (next()?, next()?, next()?, next()?);
        let length: usize = next()?.parse().map_err(|_| format!("a bad length: {header:?}"))?;
        let nulls: usize = next()?
            .parse()
            .ok()
            .filter(|n| *n <= MAX_NULLS)
            .ok_or_else(|| format!("a bad null count: {header:?}"))?;
        let step: i64 = created.parse().map_err(|_| format!("a bad created_at: {header:?}"))?;
        previous = previous.wrapping_add_signed(step);
        let stored = after
            .get(..length)
            .ok_or_else(|| format!("a body shorter than its length: {header:?}"))?;
        rest = &after[length..];
        let body = if nulls == 0 {
            Cow::Borrowed(stored)
        } else {
            let mut body = String::with_capacity(stored.len() + nulls * NULL.len() + 1);
            body.push_str(stored);
            for _ in 0..nulls {
                body.push_str(NULL);
            }
            body.push(']');
            Cow::Owned(body)
        };
        events.push(Unstaged {
            message_id: Cow::Borrowed(message_id),
            ordering_key: Cow::Borrowed(dereference(key, stored, message_id)?),
            event_type: Cow::Borrowed(dereference(event_type, stored, message_id)?),
            body: StagedBody::Text(body),
            created_at: previous,
        });
    }
    Ok(events)
}

/// The events of a staged batch of `publisher_id`, in order; an error for a
/// batch this version cannot read (a newer node's form, or damage).
pub(super) fn unstage<'b>(form: i64, batch: &'b [u8], publisher_id: &str) -> Result<Vec<Unstaged<'b>>, String> {
    let text = || std::str::from_utf8(batch).map_err(|e| format!("a batch of form {form} that is not UTF-8: {e}"));
    match form {
        PACKED => unpack(batch, publisher_id),
        JSON_ARRAY => {
            let events: Vec<JsonStaged> = serde_json::from_str(text()?).map_err(|e| e.to_string())?;
            Ok(events
                .into_iter()
                .map(|JsonStaged(message_id, key, event_type, body, created_at)| Unstaged {
                    message_id: Cow::Owned(message_id),
                    ordering_key: Cow::Owned(key),
                    event_type: Cow::Owned(event_type),
                    body: StagedBody::Text(Cow::Owned(body)),
                    created_at,
                })
                .collect())
        }
        FRAMED => unframe_framed(text()?),
        COMPACT => unframe_compact(text()?),
        other => Err(format!("an unknown form {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionId;

    const PUBLISHER: &str = "p";

    /// The events as one batch's bytes.
    fn pack(events: &[&OutboxEvent]) -> Result<Vec<u8>, SettingsError> {
        let mut batch = OutboxBatch::new(PUBLISHER.into());
        for e in events {
            pack_into(&mut batch, e)?;
        }
        Ok(batch.packed)
    }

    fn text_event(n: u64, body: &str) -> OutboxEvent {
        OutboxEvent {
            message_id: format!("msg_{n}"),
            publisher_id: PUBLISHER.into(),
            event_type: EventType::Ended,
            body: OutboxBody::Text {
                body: body.into(),
                ordering_key: format!("key-{}", n % 2),
            },
            created_at: 1_764_527_405_000 + n,
        }
    }

    /// An event as the server reports it, with a message id of its making.
    fn session_event(n: u128, event: SessionEvent) -> OutboxEvent {
        let message_id = format!("msg_{:032x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        OutboxEvent {
            message_id,
            publisher_id: PUBLISHER.into(),
            event_type: event.event_type(),
            created_at: 1_764_527_405_000 + n as u64,
            body: OutboxBody::Event(event),
        }
    }

    fn every_kind() -> Vec<SessionEvent> {
        let pool = PoolKey::from_ids(PUBLISHER, "c\"\u{e9}\n", "o\u{1f600}");
        let id = || Some(SessionId::random());
        let mut events = vec![
            SessionEvent::new(EventKind::Granted, &pool, id(), Some("living room")),
            SessionEvent::new(EventKind::Granted, &pool, id(), None),
            SessionEvent::new(EventKind::Kicked, &pool, id(), Some("")),
            SessionEvent::new(
                EventKind::TakenOver {
                    by: SessionId::random(),
                    by_name: "phone \"2\"".into(),
                },
                &pool,
                id(),
                Some("tv"),
            ),
        ];
        for reason in REASONS {
            for enforced in [true, false] {
                let session = if enforced { None } else { id() };
                events.push(SessionEvent::new(
                    EventKind::Refused { reason, enforced },
                    &pool,
                    session,
                    None,
                ));
            }
        }
        for cause in EndCause::ALL {
            events.push(SessionEvent::ended(&pool, SessionId::random(), Some("tv"), cause));
        }
        events
    }

    fn body(e: &OutboxEvent) -> String {
        match &e.body {
            OutboxBody::Event(event) => event_body::record(event),
            OutboxBody::Text { body, .. } => body.clone(),
        }
    }

    /// An event's key as the server makes it: its session's id, or its message
    /// id for an event of no session; a text's, as given.
    fn key(e: &OutboxEvent) -> String {
        match &e.body {
            OutboxBody::Event(event) => event
                .session_id
                .map_or_else(|| e.message_id.clone(), |id| id.to_string()),
            OutboxBody::Text { ordering_key, .. } => ordering_key.clone(),
        }
    }

    fn assert_read_as_written(events: &[OutboxEvent], read: &[Unstaged<'_>]) {
        assert_eq!(read.len(), events.len());
        for (e, r) in events.iter().zip(read) {
            assert_eq!(r.message_id, e.message_id);
            assert_eq!(r.ordering_key, key(e));
            assert_eq!(r.ordering_key, e.ordering_key());
            assert_eq!(r.event_type, e.event_type.as_str());
            assert_eq!(r.body.text(), body(e));
            assert_eq!(r.created_at, e.created_at);
        }
    }

    /// Every kind of event, and texts that hold anything, come back in order
    /// with their ids, keys, types and times; an event as its record.
    #[tokio::test]
    async fn a_packed_batch_reads_back_every_event_as_written() {
        let mut events: Vec<OutboxEvent> = every_kind()
            .into_iter()
            .enumerate()
            .map(|(n, e)| session_event(n as u128, e))
            .collect();
        for (n, text) in ["{\"a\":\"b c\"}", "", "x 1 2\nmsg_9 k t 1 2\n", "\u{e9}\u{1f600}"]
            .into_iter()
            .enumerate()
        {
            events.push(text_event(n as u64, text));
        }
        // Message ids not of the usual shape, and clocks that step back.
        events[1].message_id = "msg_ABCDEF0123456789abcdef0123456789".into();
        events[2].message_id = "msg_0123".into();
        events[3].created_at = 5;
        events[4].created_at = u64::MAX;
        // A text keyed by its own message id.
        let last = events.len() - 1;
        let message_id = events[last].message_id.clone();
        if let OutboxBody::Text { ordering_key, .. } = &mut events[last].body {
            *ordering_key = message_id;
        }
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let batch = pack(&refs).expect("packed");
        let read = unstage(PACKED, &batch, PUBLISHER).expect("read back");
        assert_read_as_written(&events, &read);
    }

    /// An event packed as it is reported, its message id as bytes, is the same
    /// bytes as the event with that id as text, whatever its kind, after
    /// whatever came before it in the batch.
    #[test]
    fn an_event_packed_as_reported_is_the_same_bytes_as_with_its_id_as_text() {
        let (mut reported, mut given) = (OutboxBatch::new(PUBLISHER.into()), OutboxBatch::new(PUBLISHER.into()));
        for (n, event) in every_kind().into_iter().enumerate() {
            let id = (n as u128 + 1)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                .to_be_bytes();
            // Times that step forward and back.
            let created_at = 1_764_527_405_000 + (n as u64 % 3) * 1_000 - (n as u64 % 2) * 5_000;
            let e = OutboxEvent {
                message_id: message_id_text(id),
                publisher_id: PUBLISHER.into(),
                event_type: event.event_type(),
                created_at,
                body: OutboxBody::Event(event.clone()),
            };
            pack_into(&mut given, &e).expect("packed");
            pack_reported_into(&mut reported, id, &event, created_at);
        }
        assert_eq!(reported, given);
        let read = unstage(PACKED, &reported.packed, PUBLISHER).expect("read back");
        assert_eq!(read.len(), every_kind().len());
    }

    /// What the form keeps of the usual event, a grant of a session with a name
    /// and the bench's ids: its ids as bytes, its strings as they are.
    #[tokio::test]
    async fn a_grant_packs_into_its_ids_bytes_and_its_strings() {
        let pool = PoolKey::from_ids(PUBLISHER, "customer-0012345", "premium");
        let event = SessionEvent::new(EventKind::Granted, &pool, Some(SessionId::random()), Some("tv"));
        let e = session_event(7, event);
        let batch = pack(&[&e]).expect("packed");
        // head, created (6 bytes of varint for 2025's ms), message id, what it
        // holds, offer, customer, session id, name.
        assert_eq!(batch.len(), 1 + 6 + 16 + 1 + (1 + 7) + (1 + 16) + 16 + (1 + 2));
        assert_eq!(batch[0], HEX_ID | EVENT_BODY | (KEY_SESSION << KEY_SHIFT));
        // The compact form before it staged this event in 162 bytes: the record
        // without its trailing nulls (93), and a header with the message id in
        // hex and, as the batch's first, the time in full (69).
        assert_eq!(batch.len(), 68);
    }

    /// A batch of many chunks is packed as one batch.
    #[tokio::test]
    async fn a_batch_of_many_chunks_is_one_batch() {
        let events: Vec<OutboxEvent> = (0..(CHUNK as u64 * 2 + 3)).map(|n| text_event(n, "[1]")).collect();
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let batch = pack(&refs).expect("packed");
        let read = unstage(PACKED, &batch, PUBLISHER).expect("read back");
        assert_read_as_written(&events, &read);
    }

    /// Cut anywhere or damaged, a packed batch is an error, never a panic or a
    /// wrong event.
    #[tokio::test]
    async fn a_damaged_packed_batch_is_an_error() {
        let events: Vec<OutboxEvent> = every_kind()
            .into_iter()
            .enumerate()
            .map(|(n, e)| session_event(n as u128, e))
            .collect();
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let batch = pack(&refs).expect("packed");
        // Every cut that is not between two events is an error.
        let mut boundaries = std::collections::HashSet::new();
        let mut at = 0;
        let mut previous = 0;
        for e in &events {
            let mut one = Vec::new();
            pack_event(&mut one, e, previous);
            previous = e.created_at;
            at += one.len();
            boundaries.insert(at);
        }
        assert_eq!(at, batch.len());
        for cut in 1..batch.len() {
            let read = unstage(PACKED, &batch[..cut], PUBLISHER);
            if boundaries.contains(&cut) {
                assert!(read.is_ok(), "a cut at {cut}, between events");
            } else {
                assert!(read.is_err(), "a cut at {cut}");
            }
        }
        for damaged in [
            vec![EVENT_BODY | 7, 0],                                                      // no such type
            vec![3 << KEY_SHIFT, 0, 1, b'm', 0],                                          // no such kind of key
            vec![0, 0, 1, b'm', 2, 0xff, 0xfe],                                           // a text that is not UTF-8
            vec![0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], // a varint too long
            vec![0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02],          // past 64 bits
            vec![0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],             // a text past the end
            vec![EVENT_BODY, 0, 0, 0, 0, 0], // keyed by a session it has not
            vec![
                EVENT_BODY | 1 | (KEY_MESSAGE << KEY_SHIFT),
                0,
                0,
                3 << DETAIL_SHIFT,
                0,
                0,
            ], // a refusal of no known reason
        ] {
            assert!(unstage(PACKED, &damaged, PUBLISHER).is_err(), "{damaged:?}");
        }
        assert!(unstage(5, &batch, PUBLISHER).is_err(), "an unknown form");
        for (message_id, key) in [("", "k"), ("msg_1", "")] {
            let mut e = text_event(1, "{}");
            e.message_id = message_id.into();
            e.body = OutboxBody::Text {
                body: "{}".into(),
                ordering_key: key.into(),
            };
            assert!(pack(&[&e]).is_err(), "{message_id:?} {key:?}");
        }
    }

    /// A batch staged in the [`COMPACT`] form (what the version before this one
    /// wrote; the bytes are what it made of the events here) is read as it was.
    #[test]
    fn a_compact_batch_of_the_version_before_is_still_read() {
        let batch = "msg_0 :key-0 :session.ended 1764527405000 11 0\n{\"a\":\"b c\"}msg_1 :key-1 :session.ended 1 0 0\nmsg_2 :key-0 :session.ended 1 24 0\nx 1 2 3 4\nmsg_9 k t 1 2\nmsg_3 = :session.ended 1 6 0\n\u{e9}\u{1f600}msg_4 :key-0 :session.ended -1764527404998 8 0\n[1,\"\\\"\"]msg_5 @20+5 @4+13 1764527405000 26 2\n[1,\"session.ended\",\"key-1\"msg_6 :key-0 :session.ended -1764527405006 0 1\nmsg_7 :key-1 :session.ended 1764527405008 11 10\n[,null,nullmsg_8 :key-0 :session.ended 1 1 0\n]msg_9 :key-1 :session.ended 1 29 0\n[1,\"session.granted\",\"key-0\"]";
        let bodies = [
            "{\"a\":\"b c\"}",
            "",
            "x 1 2 3 4\nmsg_9 k t 1 2\n",
            "\u{e9}\u{1f600}",
            "[1,\"\\\"\"]",
            "[1,\"session.ended\",\"key-1\",null,null]",
            ",null]",
            "[,null,null,null,null,null,null,null,null,null,null,null,null]",
            "]",
            "[1,\"session.granted\",\"key-0\"]",
        ];
        let mut events: Vec<OutboxEvent> = bodies
            .iter()
            .enumerate()
            .map(|(n, b)| text_event(n as u64, b))
            .collect();
        let message_id = events[3].message_id.clone();
        if let OutboxBody::Text { ordering_key, .. } = &mut events[3].body {
            *ordering_key = message_id;
        }
        events[4].created_at = 5;
        events[6].created_at = u64::MAX;
        let read = unstage(COMPACT, batch.as_bytes(), PUBLISHER).expect("read");
        assert_read_as_written(&events, &read);
        for damaged in [
            "m @9+2 :t 0 3 0\nabc",
            "m @1+x :t 0 3 0\nabc",
            "m = :t 0 3 11\nabc",
            "m = :t 0 3 18446744073709551615\nabc",
            "m = :t x 3 0\nabc",
            "m = :t 0 3\nabc",
        ] {
            assert!(unstage(COMPACT, damaged.as_bytes(), PUBLISHER).is_err(), "{damaged:?}");
        }
        assert!(unstage(COMPACT, &batch.as_bytes()[..batch.len() - 1], PUBLISHER).is_err());
    }

    #[test]
    fn a_framed_batch_of_the_second_version_is_still_read() {
        let batch = "msg_1 k session.ended 7 7\n{\"a\":1}msg_2 k2 session.granted 1764527405000 0\n";
        let read = unstage(FRAMED, batch.as_bytes(), PUBLISHER).expect("read");
        assert_eq!(read.len(), 2);
        assert_eq!(
            (
                read[0].message_id.as_ref(),
                read[0].ordering_key.as_ref(),
                read[0].body.text().as_ref(),
                read[0].created_at
            ),
            ("msg_1", "k", "{\"a\":1}", 7)
        );
        assert_eq!(
            (
                read[1].event_type.as_ref(),
                read[1].body.text().as_ref(),
                read[1].created_at
            ),
            ("session.granted", "", 1_764_527_405_000)
        );
        assert!(unstage(FRAMED, &batch.as_bytes()[..batch.len() - 2], PUBLISHER).is_err());
        assert!(unstage(FRAMED, &[0xff, b'\n'], PUBLISHER).is_err(), "not UTF-8");
    }

    #[test]
    fn a_batch_staged_by_the_first_version_is_still_read() {
        let batch = r#"[["msg_1","k","session.ended","{\"a\":1}",7],["msg_2","k","session.granted","",8]]"#;
        let read = unstage(JSON_ARRAY, batch.as_bytes(), PUBLISHER).expect("read");
        assert_eq!(read.len(), 2);
        assert_eq!(
            (
                read[0].message_id.as_ref(),
                read[0].body.text().as_ref(),
                read[0].created_at
            ),
            ("msg_1", "{\"a\":1}", 7)
        );
        assert_eq!(
            (read[1].event_type.as_ref(), read[1].body.text().as_ref()),
            ("session.granted", "")
        );
    }
}
