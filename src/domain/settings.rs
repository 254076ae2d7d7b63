//! Publisher and offer settings, and how a create request picks its offer.

use serde::{Deserialize, Serialize};

/// What to do with an `offerId` that is not configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownOffers {
    /// Count it against the publisher's `defaultSessionLimit` (development friendly).
    #[default]
    Default,
    /// Refuse it with 404.
    Reject,
}

impl UnknownOffers {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Reject => "reject",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "default" => Some(Self::Default),
            "reject" => Some(Self::Reject),
            _ => None,
        }
    }
}

/// A broadcaster's settings (PROTOCOL part 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    pub id: String,
    pub enabled: bool,
    pub takeover_enabled: bool,
    pub default_session_limit: u32,
    pub unknown_offers: UnknownOffers,
    /// Verifies this publisher's customer tokens: an HMAC secret or a PEM public key.
    pub verification_key: Option<String>,
    /// Or a JWKS verifies them, its key chosen by the token's `kid`: a `file://`,
    /// `https://` (or loopback `http://`) URI. At most one of the two is set.
    pub jwks_uri: Option<String>,
}

/// A plan customers subscribe to, with its session limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub id: String,
    pub session_limit: u32,
    pub tags: Vec<String>,
    /// Overrides the publisher's `takeover_enabled` when set.
    pub takeover_enabled: Option<bool>,
}

/// A publisher with all of its offers, as admission needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub publisher: Publisher,
    pub offers: Vec<Offer>,
}

/// How a request names the offer to count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferChoice<'a> {
    Id(&'a str),
    Tag(&'a str),
}

/// The offer a request counts against, with the rules that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedOffer {
    pub offer_id: String,
    pub session_limit: u32,
    pub takeover_enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("offer '{0}' is not configured for this publisher")]
    UnknownOffer(String),
    #[error("no offer of this publisher carries the tag '{0}'")]
    UnknownTag(String),
}

impl Catalog {
    /// Picks the offer for `choice` (PROTOCOL 2.1): a tag resolves to the tagged
    /// offer with the largest limit, ties going to the smallest offer id, so sessions
    /// created by tag and by id share one pool.
    pub fn resolve(&self, choice: OfferChoice<'_>) -> Result<ResolvedOffer, ResolveError> {
        let offer = match choice {
            OfferChoice::Id(id) => match self.offers.iter().find(|o| o.id == id) {
                Some(offer) => offer,
                None if self.publisher.unknown_offers == UnknownOffers::Default => {
                    return Ok(ResolvedOffer {
                        offer_id: id.to_owned(),
                        session_limit: self.publisher.default_session_limit,
                        takeover_enabled: self.publisher.takeover_enabled,
                    });
                }
                None => return Err(ResolveError::UnknownOffer(id.to_owned())),
            },
            OfferChoice::Tag(tag) => self
                .offers
                .iter()
                .filter(|o| o.tags.iter().any(|t| t == tag))
                .max_by(|a, b| a.session_limit.cmp(&b.session_limit).then(b.id.cmp(&a.id)))
                .ok_or_else(|| ResolveError::UnknownTag(tag.to_owned()))?,
        };
        Ok(ResolvedOffer {
            offer_id: offer.id.clone(),
            session_limit: offer.session_limit,
            takeover_enabled: offer.takeover_enabled.unwrap_or(self.publisher.takeover_enabled),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(unknown_offers: UnknownOffers) -> Catalog {
        let offer = |id: &str, limit, tags: &[&str]| Offer {
            id: id.into(),
            session_limit: limit,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            takeover_enabled: None,
        };
        Catalog {
            publisher: Publisher {
                id: "p".into(),
                enabled: true,
                takeover_enabled: true,
                default_session_limit: 1,
                unknown_offers,
                verification_key: None,
                jwks_uri: None,
            },
            offers: vec![
                offer("B", 3, &["live"]),
                offer("A", 3, &["live", "vod"]),
                offer("C", 2, &["live"]),
                Offer {
                    takeover_enabled: Some(false),
                    ..offer("D", 5, &["sport"])
                },
            ],
        }
    }

    #[test]
    fn a_tag_picks_the_largest_limit_and_breaks_ties_by_smallest_id() {
        let c = catalog(UnknownOffers::Default);
        assert_eq!(c.resolve(OfferChoice::Tag("live")).unwrap().offer_id, "A");
        assert_eq!(c.resolve(OfferChoice::Tag("vod")).unwrap().offer_id, "A");
        assert_eq!(
            c.resolve(OfferChoice::Tag("none")),
            Err(ResolveError::UnknownTag("none".into()))
        );
    }

    #[test]
    fn unknown_offers_get_the_default_limit_or_are_rejected() {
        let r = catalog(UnknownOffers::Default).resolve(OfferChoice::Id("Z")).unwrap();
        assert_eq!((r.offer_id.as_str(), r.session_limit), ("Z", 1));
        assert_eq!(
            catalog(UnknownOffers::Reject).resolve(OfferChoice::Id("Z")),
            Err(ResolveError::UnknownOffer("Z".into()))
        );
    }

    #[test]
    fn an_offer_may_override_the_takeover_flag() {
        let c = catalog(UnknownOffers::Default);
        assert!(!c.resolve(OfferChoice::Id("D")).unwrap().takeover_enabled);
        assert!(c.resolve(OfferChoice::Id("A")).unwrap().takeover_enabled);
    }
}
