//! The one codec between the scripts and Rust: the session record as the scripts
//! keep it in a pool's hash, and the replies they send back.
//!
//! In a customer's hash a record is packed, `s|e|h|c|L|o|n`: `s` state
//! (`p`ending, `l`ive, `d`etached; `x`: a live one whose node stopped vouching,
//! marked lost by a script and then `e` is when, which holds no slot and which
//! no script returns), `e` expires at (epoch ms, base 36), `h` holder (socket
//! id in hex, "" if none: its leading digits name the node, which the scripts
//! read), `c` created at (epoch ms, base 36), `L` the length in bytes of `o`, the offer
//! (the pool), `n` name, last since it may hold any character. The id is the
//! hash's field, [`keys::compact`]. Base 36 and the compact id keep a record
//! with a short name under Redis's 64 bytes for a listpack (`keys.rs`,
//! "Memory"): 8 characters for an epoch millisecond's 13. A session handed to the restore script is packed without the
//! offer (`s|e|h|c|n`, [`encode`]): the script is told the pool. Packed rather than JSON: a third smaller in Redis's
//! memory, and cheaper for the scripts to read. When a script returns a record
//! it is a JSON object with those field names and `id` added (`e` is then the
//! deadline the record holds its slot until). Replies that carry more than one
//! value are JSON objects too, read here by field name: a script and its reader
//! cannot disagree on a position. Anything unexpected (an unknown state, a
//! missing field) is an error, never a guess: a guessed record would keep a dead
//! session or drop a live one.
//!
//! Numbers go through Lua's doubles (cjson prints 14 significant digits): epoch
//! milliseconds fit exactly, so they are read as `f64` and converted.

use std::collections::BTreeMap;

use redis::Value;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::keys;
use crate::domain::ports::{EndCause, StoreError};
use crate::domain::{Holder, Millis, Session, SessionId, SessionState};

/// A reply the store cannot read: the scripts and this codec disagree.
pub(crate) fn unreadable(what: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Unreadable(format!("{what}: {why}"))
}

/// The letter a state is stored as.
pub(crate) fn state_code(state: SessionState) -> &'static str {
    match state {
        SessionState::Pending => "p",
        SessionState::Live => "l",
        SessionState::Detached => "d",
    }
}

fn state_of(code: &str) -> Result<SessionState, String> {
    match code {
        "p" => Ok(SessionState::Pending),
        "l" => Ok(SessionState::Live),
        "d" => Ok(SessionState::Detached),
        other => Err(format!("unknown session state {other:?}")),
    }
}

/// A socket id as the scripts write it: hex, "" for none.
fn holder_of(text: &str) -> Result<Option<Holder>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    u64::from_str_radix(text, 16)
        .map(|h| Some(Holder(h)))
        .map_err(|_| format!("unreadable holder {text:?}"))
}

/// A socket id as the scripts take it: hex, so they can read the node off it.
pub(crate) fn holder_arg(holder: Holder) -> String {
    format!("{:x}", holder.0)
}

fn holder_text(holder: Option<Holder>) -> String {
    holder.map(holder_arg).unwrap_or_default()
}

/// A session id as the scripts take it: [`keys::compact`].
pub(crate) fn id_arg(id: SessionId) -> String {
    keys::compact(id)
}

/// A session id as the scripts return it (compact; a UUID's text is read too).
fn id_of(text: &str) -> Option<SessionId> {
    keys::parse_compact(text).or_else(|| SessionId::parse(text))
}

/// A session record as a script returns it, field for field.
#[derive(Debug, Deserialize)]
struct Record {
    #[serde(default)]
    id: Option<String>,
    s: String,
    e: f64,
    h: String,
    c: f64,
    n: String,
}

impl Record {
    fn into_session(self) -> Result<Session, String> {
        let id = self.id.ok_or("the record has no id")?;
        Ok(Session {
            id: id_of(&id).ok_or_else(|| format!("unreadable session id {id:?}"))?,
            name: self.n,
            state: state_of(&self.s)?,
            expires_at: self.e as Millis,
            holder: holder_of(&self.h)?,
            created_at: self.c as Millis,
        })
    }
}

/// A session as the restore and re-assert scripts take it, `s|e|h|c|n` with
/// the times in decimal (the scripts pack it as the customer's hash keeps it).
/// `expires_at` or `created_at` 0 ask the script for "now".
pub(crate) fn encode(session: &Session) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        state_code(session.state),
        session.expires_at,
        holder_text(session.holder),
        session.created_at,
        session.name
    )
}

/// The offer (the pool) of a record as a customer's hash keeps it; `None` if
/// the text is not one.
pub(crate) fn stored_offer(stored: &str) -> Option<&str> {
    let mut parts = stored.splitn(6, '|');
    let state = parts.next()?;
    for _ in 0..3 {
        parts.next()?;
    }
    let len: usize = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    (state.len() == 1 && rest.as_bytes().get(len) == Some(&b'|'))
        .then(|| rest.get(..len))
        .flatten()
}

/// A record with its id, as the scripts return it.
pub(crate) fn decode(text: &str) -> Result<Session, StoreError> {
    serde_json::from_str::<Record>(text)
        .map_err(|e| e.to_string())
        .and_then(Record::into_session)
        .map_err(|why| unreadable("session record", why))
}

/// The text of a bulk-string reply.
fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A reply that is one record, or nil (the script found none).
pub(crate) fn session_or_nil(value: &Value, what: &str) -> Result<Option<Session>, StoreError> {
    match value {
        Value::Nil => Ok(None),
        other => text(other)
            .ok_or_else(|| unreadable(what, "expected a record"))
            .and_then(decode)
            .map(Some),
    }
}

/// The end script's reply when a socket ends its session.
#[derive(Debug, PartialEq)]
pub(crate) enum EndReply {
    /// It ended the session: its record.
    Ended(Session),
    /// This socket's own end, retried after its reply was lost, had ended it
    /// already (its tombstone, [`socket_tombstone`], says so).
    Again,
    /// Not this socket's session, or already gone.
    Nothing,
}

pub(crate) fn end_reply(value: &Value) -> Result<EndReply, StoreError> {
    if text(value) == Some("again") {
        return Ok(EndReply::Again);
    }
    Ok(session_or_nil(value, "end")?.map_or(EndReply::Nothing, EndReply::Ended))
}

/// The tombstone a socket's end leaves when its outcome must survive a lost
/// reply: names the socket, so a retry of the same end knows it was its own.
pub(crate) fn socket_tombstone(holder: Holder) -> String {
    format!("S{}", holder_arg(holder))
}

/// A reply that is a list of records.
pub(crate) fn sessions(value: Value, what: &str) -> Result<Vec<Session>, StoreError> {
    let Value::Array(items) = value else {
        return Err(unreadable(what, "expected a list of records"));
    };
    items
        .iter()
        .map(|item| {
            text(item)
                .ok_or_else(|| unreadable(what, "expected a record"))
                .and_then(decode)
        })
        .collect()
}

/// A reply that is a count or a flag.
pub(crate) fn int(value: &Value, what: &str) -> Result<i64, StoreError> {
    match value {
        Value::Int(i) => Ok(*i),
        _ => Err(unreadable(what, "expected an integer")),
    }
}

/// A reply that is one JSON object, read into `T` by field name.
pub(crate) fn reply<T: DeserializeOwned>(value: &Value, what: &str) -> Result<T, StoreError> {
    let text = text(value).ok_or_else(|| unreadable(what, "expected a JSON reply"))?;
    serde_json::from_str(text).map_err(|e| unreadable(what, e))
}

/// cjson writes an empty Lua table as `{}`: read it as an empty list.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Table<T> {
        List(Vec<T>),
        Empty(BTreeMap<String, serde::de::IgnoredAny>),
    }
    match Table::deserialize(d)? {
        Table::List(items) => Ok(items),
        Table::Empty(map) if map.is_empty() => Ok(Vec::new()),
        Table::Empty(_) => Err(serde::de::Error::custom("expected a list")),
    }
}

fn epoch_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    Ok(f64::deserialize(d)? as Millis)
}

fn session_id<'de, D: Deserializer<'de>>(d: D) -> Result<SessionId, D::Error> {
    let text = String::deserialize(d)?;
    id_of(&text).ok_or_else(|| serde::de::Error::custom(format!("unreadable session id {text:?}")))
}

fn optional_holder<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Holder>, D::Error> {
    holder_of(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn holder<'de, D: Deserializer<'de>>(d: D) -> Result<Holder, D::Error> {
    optional_holder(d)?.ok_or_else(|| serde::de::Error::custom("a live session without a holder"))
}

fn record<'de, D: Deserializer<'de>>(d: D) -> Result<Session, D::Error> {
    Record::deserialize(d)?.into_session().map_err(serde::de::Error::custom)
}

/// A live session of the pool, to be pinged (its socket may be on any node).
#[derive(Debug, Deserialize)]
pub(crate) struct LiveSession {
    #[serde(deserialize_with = "session_id")]
    pub id: SessionId,
    #[serde(rename = "h", deserialize_with = "holder")]
    pub holder: Holder,
}

/// A session that fills the pool, as a refused player sees it.
#[derive(Debug, Deserialize)]
pub(crate) struct Named {
    #[serde(deserialize_with = "session_id")]
    pub id: SessionId,
    #[serde(rename = "n")]
    pub name: String,
}

/// A dead session that a script deleted (admit, take-over, attach, purge: the
/// only scripts that delete dead records): nobody else will report its end
/// (its node is gone, or it never had a socket).
#[derive(Debug, Deserialize)]
pub(crate) struct Purged {
    #[serde(deserialize_with = "session_id")]
    pub id: SessionId,
    /// Its pool's offer (the customer's hash holds every offer's sessions).
    #[serde(rename = "o")]
    pub offer: String,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "c", deserialize_with = "end_cause")]
    pub cause: EndCause,
}

/// The purge script's reply: where to go on from in the shard (`None`: done),
/// and the dead records it deleted, each with its customer's tag.
#[derive(Debug, Deserialize)]
pub(crate) struct PurgeReply {
    #[serde(deserialize_with = "next_bucket")]
    pub next: Option<u8>,
    #[serde(default, deserialize_with = "list")]
    pub gone: Vec<Swept>,
}

/// A dead record the purge deleted, and whose it was ([`super::keys::customer_tag`]).
#[derive(Debug, Deserialize)]
pub(crate) struct Swept {
    #[serde(rename = "t")]
    pub tag: String,
    #[serde(flatten)]
    pub dead: Purged,
}

fn next_bucket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let next = i64::deserialize(d)?;
    Ok(u8::try_from(next).ok())
}

fn end_cause<'de, D: Deserializer<'de>>(d: D) -> Result<EndCause, D::Error> {
    let text = String::deserialize(d)?;
    EndCause::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown end cause {text:?}")))
}

/// The reply of the admit script. Each outcome but `Lost` carries the dead
/// sessions the script deleted (`gone`).
#[derive(Debug, Deserialize)]
#[serde(tag = "ok", rename_all = "snake_case")]
pub(crate) enum AdmitReply {
    /// Granted at the script's `now`; the pool's live sessions are to be pinged.
    Granted {
        #[serde(deserialize_with = "epoch_ms")]
        now: Millis,
        #[serde(default, deserialize_with = "list")]
        live: Vec<LiveSession>,
        /// How many sessions the pool held beside the new one.
        #[serde(default)]
        others: u32,
        /// The shard's data epoch.
        #[serde(default)]
        epoch: String,
        #[serde(default, deserialize_with = "list")]
        gone: Vec<Purged>,
    },
    /// The pool holds as many sessions as allowed.
    Full {
        #[serde(default, deserialize_with = "list")]
        held: Vec<Named>,
        #[serde(default, deserialize_with = "list")]
        gone: Vec<Purged>,
    },
    /// The customer holds as many sessions across its pools as its household cap allows.
    Household {
        #[serde(default, deserialize_with = "list")]
        held: Vec<Named>,
        #[serde(default, deserialize_with = "list")]
        gone: Vec<Purged>,
    },
    /// The pool is empty and the customer holds sessions in as many pools as allowed.
    TooManyPools {
        #[serde(default, deserialize_with = "list")]
        gone: Vec<Purged>,
    },
    /// The shard is in another data epoch than the node knows: nothing was done.
    Lost { epoch: String },
}

/// The reply of the take-over script.
#[derive(Debug, Deserialize)]
#[serde(tag = "ok", rename_all = "snake_case")]
pub(crate) enum TakeOverReply {
    Taken {
        #[serde(deserialize_with = "epoch_ms")]
        now: Millis,
        #[serde(deserialize_with = "record")]
        victim: Session,
        #[serde(default, deserialize_with = "list")]
        live: Vec<LiveSession>,
        /// How many sessions are left beside the new one.
        #[serde(default)]
        others: u32,
        #[serde(default, deserialize_with = "list")]
        gone: Vec<Purged>,
    },
    /// The victim is not in the pool (ended, dead, or never there).
    Gone {
        #[serde(default, deserialize_with = "list")]
        gone: Vec<Purged>,
    },
}

/// The reply of the attach script.
#[derive(Debug, Deserialize)]
#[serde(tag = "ok", rename_all = "snake_case")]
pub(crate) enum AttachReply {
    Attached {
        /// The socket that held the session before, to be told to stop.
        #[serde(deserialize_with = "optional_holder")]
        previous: Option<Holder>,
        #[serde(rename = "n")]
        name: String,
        #[serde(rename = "c", deserialize_with = "epoch_ms")]
        created_at: Millis,
        /// The shard's data epoch ("" if it has none).
        #[serde(default)]
        epoch: String,
        #[serde(default, deserialize_with = "list")]
        gone: Vec<Purged>,
    },
    Gone {
        #[serde(default, deserialize_with = "list")]
        gone: Vec<Purged>,
    },
}

/// What the check script found of one held session (a refresh round checks many
/// in one call, so each answer is one short code, not an object).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CheckReply {
    /// Held by this socket (and its deadline rewritten if it was old).
    Held,
    /// Another socket holds the session now.
    Elsewhere,
    /// The session ended; its tombstone, if any, says why (`T<name>`: taken over).
    Gone { tombstone: String },
}

/// The check script's reply: one code per session, in the order asked.
pub(crate) fn checks(value: Value, asked: usize) -> Result<Vec<CheckReply>, StoreError> {
    let Value::Array(items) = value else {
        return Err(unreadable("check", "expected a list of codes"));
    };
    if items.len() != asked {
        return Err(unreadable(
            "check",
            format!("{} answers for {asked} sessions", items.len()),
        ));
    }
    items
        .iter()
        .map(|item| match text(item) {
            Some("r") => Ok(CheckReply::Held),
            Some("x") => Ok(CheckReply::Elsewhere),
            Some(code) if code.starts_with('g') => Ok(CheckReply::Gone {
                tombstone: code[1..].to_owned(),
            }),
            _ => Err(unreadable("check", "unknown code")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(state: SessionState, holder: Option<Holder>) -> Session {
        Session {
            id: SessionId::random(),
            name: "TV \"kitchen\" | ünïcode".into(),
            state,
            expires_at: 1_780_000_123_456,
            holder,
            created_at: 1_780_000_000_001,
        }
    }

    /// The record as a script returns it: a JSON object with its id.
    fn as_returned(s: &Session) -> String {
        serde_json::json!({
            "id": id_arg(s.id),
            "s": state_code(s.state),
            "e": s.expires_at,
            "h": holder_text(s.holder),
            "c": s.created_at,
            "n": s.name,
        })
        .to_string()
    }

    #[test]
    fn a_record_survives_the_round_trip_in_every_state() {
        for s in [
            session(SessionState::Pending, None),
            session(SessionState::Live, Some(Holder(42 << Holder::NODE_SHIFT | 7))),
            session(SessionState::Detached, None),
        ] {
            assert_eq!(decode(&as_returned(&s)).unwrap(), s);
        }
    }

    #[test]
    fn a_record_is_stored_packed_without_its_id_with_one_letter_per_state_and_a_hex_holder() {
        let s = session(SessionState::Live, Some(Holder(0xab << Holder::NODE_SHIFT | 0x1f)));
        assert_eq!(
            encode(&s),
            format!("l|1780000123456|ab000000001f|1780000000001|{}", s.name),
            "the id is the hash's field; the name is last, whatever it holds"
        );
        assert_eq!(holder_of("ab000000001f").unwrap(), s.holder);
    }

    #[test]
    fn check_codes_are_read_one_per_session_and_an_unknown_one_is_an_error() {
        let codes = |c: &[&str]| Value::Array(c.iter().map(|c| Value::BulkString(c.as_bytes().to_vec())).collect());
        assert_eq!(
            checks(codes(&["r", "x", "g", "gTPhone"]), 4).unwrap(),
            vec![
                CheckReply::Held,
                CheckReply::Elsewhere,
                CheckReply::Gone {
                    tombstone: String::new()
                },
                CheckReply::Gone {
                    tombstone: "TPhone".into()
                },
            ]
        );
        assert!(checks(codes(&["r", "?"]), 2).is_err());
        assert!(checks(codes(&["r"]), 2).is_err(), "one answer per session asked");
    }

    #[test]
    fn the_offer_of_a_stored_record_is_read_by_its_length_whatever_it_contains() {
        assert_eq!(stored_offer("l|5|abc|1|5|o|f|f|TV | kitchen"), Some("o|f|f"));
        assert_eq!(stored_offer("p|5||1|0||"), Some(""));
        assert_eq!(stored_offer("p|5||1|9|short|tv"), None);
        assert_eq!(stored_offer("p|5||1|2|abc"), None, "no separator after the offer");
        assert_eq!(stored_offer("p|5||1|tv"), None, "the old layout, without offer");
        let lost = Value::BulkString(br#"{"ok":"lost","epoch":"00ff"}"#.to_vec());
        assert!(matches!(reply(&lost, "admit").unwrap(), AdmitReply::Lost { epoch } if epoch == "00ff"));
    }

    #[test]
    fn an_unknown_state_is_an_error_not_a_detached_session() {
        let s = session(SessionState::Detached, None);
        let text = as_returned(&s).replace(r#""s":"d""#, r#""s":"x""#);
        let error = decode(&text).unwrap_err();
        assert!(error.to_string().contains("unknown session state"), "{error}");
    }

    #[test]
    fn a_record_missing_a_field_is_an_error() {
        let s = session(SessionState::Pending, None);
        for field in ["id", "s", "e", "h", "c", "n"] {
            let mut json: serde_json::Value = serde_json::from_str(&as_returned(&s)).unwrap();
            json.as_object_mut().unwrap().remove(field);
            assert!(decode(&json.to_string()).is_err(), "without {field}");
        }
    }

    #[test]
    fn an_unreadable_holder_or_id_is_an_error() {
        let s = session(SessionState::Live, Some(Holder(3)));
        assert!(decode(&as_returned(&s).replace(r#""h":"3""#, r#""h":"three""#)).is_err());
        assert!(decode(&as_returned(&s).replace(&id_arg(s.id), "not-an-id")).is_err());
        // A UUID's text is read too (the scripts return what they were given).
        let uuid_text = as_returned(&s).replace(&id_arg(s.id), &s.id.to_string());
        assert_eq!(decode(&uuid_text).unwrap().id, s.id);
    }

    #[test]
    fn replies_are_read_by_name_and_an_empty_lua_table_is_an_empty_list() {
        let id = SessionId::random();
        let granted = format!(r#"{{"live":[{{"h":"5","id":"{id}"}}],"now":1780000000000,"ok":"granted"}}"#);
        let AdmitReply::Granted { now, live, .. } = reply(&Value::BulkString(granted.into_bytes()), "admit").unwrap()
        else {
            panic!("granted");
        };
        assert_eq!((now, live[0].id, live[0].holder), (1_780_000_000_000, id, Holder(5)));
        let empty = Value::BulkString(br#"{"ok":"full","held":{}}"#.to_vec());
        assert!(matches!(reply(&empty, "admit").unwrap(), AdmitReply::Full { held, .. } if held.is_empty()));
        let unknown = Value::BulkString(br#"{"ok":"maybe"}"#.to_vec());
        assert!(reply::<AdmitReply>(&unknown, "admit").is_err());
        assert!(reply::<AdmitReply>(&Value::Int(1), "admit").is_err());
    }

    #[test]
    fn a_household_refusal_lists_the_customers_sessions_by_name() {
        let id = SessionId::random();
        let text = format!(r#"{{"ok":"household","held":[{{"id":"{id}","n":"TV"}}]}}"#);
        let AdmitReply::Household { held, .. } = reply(&Value::BulkString(text.into_bytes()), "admit").unwrap() else {
            panic!("household");
        };
        assert_eq!((held[0].id, held[0].name.as_str()), (id, "TV"));
    }

    #[test]
    fn a_purge_names_each_dead_session_with_its_customer_and_where_to_go_on() {
        let dead = SessionId::random();
        let compact = keys::compact(dead);
        let text = format!(
            r#"{{"next":3,"gone":[{{"t":"1:p|2:42","id":"{compact}","o":"sport","n":"TV","c":"connect_timeout"}}]}}"#
        );
        let PurgeReply { next, gone } = reply(&Value::BulkString(text.into_bytes()), "purge").unwrap();
        assert_eq!(next, Some(3));
        assert_eq!((gone[0].tag.as_str(), gone[0].dead.id), ("1:p|2:42", dead));
        assert_eq!(gone[0].dead.cause, EndCause::ConnectTimeout);
        // The shard done, nothing dead: -1 and no list (cjson writes no empty table here).
        let PurgeReply { next, gone } = reply(&Value::BulkString(br#"{"next":-1}"#.to_vec()), "purge").unwrap();
        assert_eq!((next, gone.len()), (None, 0));
    }

    #[test]
    fn an_admission_names_the_dead_sessions_it_deleted_with_their_cause() {
        let (id, dead) = (SessionId::random(), SessionId::random());
        let compact = keys::compact(dead);
        let text = format!(
            r#"{{"ok":"full","held":[{{"id":"{id}","n":"TV"}}],"gone":[{{"id":"{compact}","o":"sport","n":"Phone","c":"node_lost"}}]}}"#
        );
        let AdmitReply::Full { gone, .. } = reply(&Value::BulkString(text.into_bytes()), "admit").unwrap() else {
            panic!("full");
        };
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].id, gone[0].offer.as_str()), (dead, "sport"));
        assert_eq!((gone[0].name.as_str(), gone[0].cause), ("Phone", EndCause::NodeLost));
        let none = Value::BulkString(br#"{"ok":"too_many_pools"}"#.to_vec());
        assert!(matches!(reply(&none, "admit").unwrap(), AdmitReply::TooManyPools { gone } if gone.is_empty()));
        let unknown = format!(r#"{{"ok":"too_many_pools","gone":[{{"id":"{compact}","o":"o","n":"","c":"bored"}}]}}"#);
        assert!(reply::<AdmitReply>(&Value::BulkString(unknown.into_bytes()), "admit").is_err());
    }

    #[test]
    fn lists_and_nil_replies_decode_and_a_bad_item_fails_the_whole_reply() {
        let s = session(SessionState::Live, Some(Holder(1)));
        let item = Value::BulkString(as_returned(&s).into_bytes());
        assert_eq!(
            sessions(Value::Array(vec![item.clone()]), "list").unwrap(),
            vec![s.clone()]
        );
        assert_eq!(session_or_nil(&Value::Nil, "end").unwrap(), None);
        assert_eq!(session_or_nil(&item, "end").unwrap(), Some(s));
        let bad = Value::BulkString(br#"{"id":"x"}"#.to_vec());
        assert!(sessions(Value::Array(vec![item, bad]), "list").is_err());
    }

    /// Take-over and attach name the dead records they deleted as admit does;
    /// a reply without `gone` (none deleted) reads as an empty list.
    #[test]
    fn take_over_and_attach_replies_carry_the_dead_records_they_deleted() {
        let dead = SessionId::random();
        let compact = id_arg(dead);
        let gone = format!(r#""gone":[{{"id":"{compact}","o":"o","n":"TV","c":"connect_timeout"}}]"#);
        let text = format!(r#"{{"ok":"gone",{gone}}}"#);
        let TakeOverReply::Gone { gone: taken } = reply(&Value::BulkString(text.into_bytes()), "take_over").unwrap()
        else {
            panic!("not gone");
        };
        assert_eq!(
            (taken.len(), taken[0].id, taken[0].cause),
            (1, dead, EndCause::ConnectTimeout)
        );
        let text = format!(r#"{{"ok":"attached","previous":"","n":"Phone","c":5,"epoch":"",{gone}}}"#);
        let AttachReply::Attached { gone: met, .. } = reply(&Value::BulkString(text.into_bytes()), "attach").unwrap()
        else {
            panic!("not attached");
        };
        assert_eq!((met.len(), met[0].name.as_str()), (1, "TV"));
        let none = Value::BulkString(br#"{"ok":"gone"}"#.to_vec());
        assert!(matches!(reply(&none, "attach").unwrap(), AttachReply::Gone { gone } if gone.is_empty()));
    }
}
