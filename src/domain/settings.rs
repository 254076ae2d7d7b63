//! Publisher and offer settings, and how a create request picks its offer.

use serde::{Deserialize, Serialize};

use super::policy::LimitPolicy;

/// The longest offer id or tag accepted, in bytes, from players and operators alike.
pub const MAX_ID_BYTES: usize = 256;

/// The pool every offer a publisher does not know counts against under
/// [`UnknownOffers::Shared`]. The admin API refuses to configure an offer with this
/// id, and [`Catalog::resolve`] never treats a stored one as configured, so the
/// shared pool can never merge with a real offer's pool.
pub const SHARED_UNKNOWN_OFFER: &str = "*unknown";

/// What to do with an `offerId` that is not configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownOffers {
    /// All of a customer's unknown offers share ONE pool with the publisher's
    /// `defaultSessionLimit`: made-up offer ids cannot multiply the limit.
    #[default]
    Shared,
    /// Each unknown offer is a pool of its own with the publisher's
    /// `defaultSessionLimit` (development only: a customer can multiply its
    /// slots by inventing offer ids, up to `publishers.max_pools_per_customer`).
    /// `"default"` is its name before `"shared"` existed, still accepted.
    #[serde(alias = "default")]
    Each,
    /// Refuse it with 404.
    Reject,
}

impl UnknownOffers {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Each => "each",
            Self::Reject => "reject",
        }
    }

    /// Reads a stored value; `"default"` is how rows written before `"shared"`
    /// existed spell [`UnknownOffers::Each`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared" => Some(Self::Shared),
            "each" | "default" => Some(Self::Each),
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
    /// What a full pool does when its offer does not say (`onLimit`, an extension).
    pub on_limit: LimitPolicy,
    /// The household cap: sessions one customer may hold across all offers at
    /// once (`customerSessionLimit`, an extension); `None`: no cap.
    pub customer_session_limit: Option<u32>,
}

/// A plan customers subscribe to, with its session limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub id: String,
    pub session_limit: u32,
    pub tags: Vec<String>,
    /// Overrides the publisher's `takeover_enabled` when set.
    pub takeover_enabled: Option<bool>,
    /// Overrides the publisher's `on_limit` when set.
    pub on_limit: Option<LimitPolicy>,
}

/// A publisher with all of its offers, as admission needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub publisher: Publisher,
    pub offers: Vec<Offer>,
    /// Whether any customer of this publisher has an override (expired ones
    /// included): admission looks a customer's override up only then, so a
    /// publisher without any costs no lookup per create.
    pub overridden: bool,
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
    /// The offer as the player knows it: the id it asked for, or the offer its tag
    /// picked. Shown back in the granted body.
    pub offer_id: String,
    /// The pool the session counts against: `offer_id`, except for unknown offers
    /// under [`UnknownOffers::Shared`], which all count against [`SHARED_UNKNOWN_OFFER`].
    pub pool_offer_id: String,
    pub session_limit: u32,
    pub takeover_enabled: bool,
    /// What its pool does when full.
    pub on_limit: LimitPolicy,
    /// The publisher's household cap ([`Publisher::customer_session_limit`]).
    pub customer_session_limit: Option<u32>,
    /// Whether the customer may have an override of `session_limit` ([`Catalog::overridden`]).
    pub overridden: bool,
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
        // A stored offer with the reserved id (from before it was reserved) is
        // ignored: the shared pool must stay the unknown offers' alone.
        let mut configured = self.offers.iter().filter(|o| o.id != SHARED_UNKNOWN_OFFER);
        let offer = match choice {
            OfferChoice::Id(id) => match configured.find(|o| o.id == id) {
                Some(offer) => offer,
                None => return self.unknown(id),
            },
            OfferChoice::Tag(tag) => configured
                .filter(|o| o.tags.iter().any(|t| t == tag))
                .max_by(|a, b| a.session_limit.cmp(&b.session_limit).then(b.id.cmp(&a.id)))
                .ok_or_else(|| ResolveError::UnknownTag(tag.to_owned()))?,
        };
        Ok(ResolvedOffer {
            offer_id: offer.id.clone(),
            pool_offer_id: offer.id.clone(),
            session_limit: offer.session_limit,
            takeover_enabled: offer.takeover_enabled.unwrap_or(self.publisher.takeover_enabled),
            on_limit: offer.on_limit.unwrap_or(self.publisher.on_limit),
            customer_session_limit: self.publisher.customer_session_limit,
            overridden: self.overridden,
        })
    }

    /// An offer id this publisher does not configure, under its `unknownOffers` rule.
    fn unknown(&self, id: &str) -> Result<ResolvedOffer, ResolveError> {
        let pool_offer_id = match self.publisher.unknown_offers {
            UnknownOffers::Shared => SHARED_UNKNOWN_OFFER,
            UnknownOffers::Each => id,
            UnknownOffers::Reject => return Err(ResolveError::UnknownOffer(id.to_owned())),
        };
        Ok(ResolvedOffer {
            offer_id: id.to_owned(),
            pool_offer_id: pool_offer_id.to_owned(),
            session_limit: self.publisher.default_session_limit,
            takeover_enabled: self.publisher.takeover_enabled,
            on_limit: self.publisher.on_limit,
            customer_session_limit: self.publisher.customer_session_limit,
            // Overrides are set on configured offers only.
            overridden: false,
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
            on_limit: None,
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
                on_limit: LimitPolicy::Reject,
                customer_session_limit: None,
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
            overridden: false,
        }
    }

    #[test]
    fn a_tag_picks_the_largest_limit_and_breaks_ties_by_smallest_id() {
        let c = catalog(UnknownOffers::Each);
        assert_eq!(c.resolve(OfferChoice::Tag("live")).unwrap().offer_id, "A");
        assert_eq!(c.resolve(OfferChoice::Tag("vod")).unwrap().offer_id, "A");
        assert_eq!(
            c.resolve(OfferChoice::Tag("none")),
            Err(ResolveError::UnknownTag("none".into()))
        );
    }

    #[test]
    fn unknown_offers_share_one_pool_by_default() {
        let c = catalog(UnknownOffers::default());
        let x = c.resolve(OfferChoice::Id("X")).unwrap();
        let y = c.resolve(OfferChoice::Id("Y")).unwrap();
        assert_eq!((x.offer_id.as_str(), x.session_limit), ("X", 1));
        assert_eq!(x.pool_offer_id, SHARED_UNKNOWN_OFFER);
        assert_eq!(y.pool_offer_id, x.pool_offer_id, "one pool for every unknown offer");
        assert_eq!(c.resolve(OfferChoice::Id("A")).unwrap().pool_offer_id, "A");
    }

    #[test]
    fn unknown_offers_get_a_pool_each_or_are_rejected() {
        let r = catalog(UnknownOffers::Each).resolve(OfferChoice::Id("Z")).unwrap();
        assert_eq!((r.pool_offer_id.as_str(), r.session_limit), ("Z", 1));
        assert_eq!(
            catalog(UnknownOffers::Reject).resolve(OfferChoice::Id("Z")),
            Err(ResolveError::UnknownOffer("Z".into()))
        );
    }

    #[test]
    fn a_stored_offer_with_the_reserved_id_is_not_configured() {
        let mut c = catalog(UnknownOffers::Shared);
        c.offers.push(Offer {
            id: SHARED_UNKNOWN_OFFER.into(),
            session_limit: 50,
            tags: vec!["live".into()],
            takeover_enabled: None,
            on_limit: None,
        });
        let r = c.resolve(OfferChoice::Id(SHARED_UNKNOWN_OFFER)).unwrap();
        assert_eq!(r.session_limit, 1, "the default limit, not the stored 50");
        assert_eq!(c.resolve(OfferChoice::Tag("live")).unwrap().offer_id, "A");
    }

    #[test]
    fn the_old_name_default_means_each() {
        assert_eq!(UnknownOffers::parse("default"), Some(UnknownOffers::Each));
        let parsed: UnknownOffers = serde_json::from_str("\"default\"").unwrap();
        assert_eq!(parsed, UnknownOffers::Each);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), "\"each\"");
        assert_eq!(UnknownOffers::default().as_str(), "shared");
    }

    #[test]
    fn an_offer_may_override_the_publishers_limit_policy() {
        let mut c = catalog(UnknownOffers::Each);
        c.publisher.on_limit = LimitPolicy::Monitor;
        c.offers[0].on_limit = Some(LimitPolicy::EvictOldest);
        assert_eq!(
            c.resolve(OfferChoice::Id("B")).unwrap().on_limit,
            LimitPolicy::EvictOldest
        );
        assert_eq!(c.resolve(OfferChoice::Id("A")).unwrap().on_limit, LimitPolicy::Monitor);
        assert_eq!(c.resolve(OfferChoice::Id("Z")).unwrap().on_limit, LimitPolicy::Monitor);
    }

    #[test]
    fn an_offer_may_override_the_takeover_flag() {
        let c = catalog(UnknownOffers::Each);
        assert!(!c.resolve(OfferChoice::Id("D")).unwrap().takeover_enabled);
        assert!(c.resolve(OfferChoice::Id("A")).unwrap().takeover_enabled);
    }
}
